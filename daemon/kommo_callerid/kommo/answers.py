"""What an attempt came back with, as the transport judges it: no answer at all
(:class:`Failure`), an answer worth retrying, the pause Kommo asked for, a body read up to a
cap; and the ``kommo.error`` line of an attempt about to be retried (:class:`RetryLog`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from kommo_callerid.kommo.parse import Response, error_detail, loads_json

log = structlog.get_logger("kommo_callerid.kommo.transport")

#: The longest pause a 429's ``retry_after`` may impose.
MAX_PAUSE = 60.0
#: How often a repeating retryable error is logged (403: the issue asks for once a minute).
ERROR_LOG_INTERVAL = {403: 60.0}
DEFAULT_ERROR_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that got no HTTP answer."""

    detail: str
    status: None = None


def retryable(status: int | None) -> bool:
    return status is None or status in (403, 429) or status >= 500


def pause_asked(outcome: Response | Failure) -> float | None:
    """How long Kommo asked us to wait: ``retry_after`` in a JSON body, else the header."""
    if not isinstance(outcome, Response) or outcome.status != 429:
        return None
    try:
        data = loads_json(outcome.body)
    except ValueError:
        data = None
    from_body = seconds(data.get("retry_after")) if isinstance(data, dict) else None
    pause = from_body if from_body is not None else outcome.retry_after
    return min(pause, MAX_PAUSE) if pause is not None else None


def seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < float("inf") else None


async def read_capped(answer: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, or None when it is larger than ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_any():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class RetryLog:
    """``kommo.error`` for a failed attempt about to be retried; the same endpoint and status
    again within :data:`ERROR_LOG_INTERVAL` is counted, not logged (``repeated``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._logged: dict[tuple[str, int | None], tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._logged)

    def retrying(self, path: str, outcome: Response | Failure, attempt: int, delay: float) -> None:
        key = (path, outcome.status)
        now = self._clock()
        logged_at, repeated = self._logged.get(key, (float("-inf"), 0))
        interval = ERROR_LOG_INTERVAL.get(outcome.status or 0, DEFAULT_ERROR_LOG_INTERVAL)
        if now - logged_at < interval:
            self._logged[key] = (logged_at, repeated + 1)
            return
        self._logged[key] = (now, 0)
        detail = outcome.detail if isinstance(outcome, Failure) else error_detail(outcome)
        if outcome.status == 403:
            detail = f"{detail}: account blocked or IP not allowed; pausing all requests"
        log.error(
            "kommo.error",
            status=outcome.status,
            endpoint=path,
            detail=detail,
            attempt=attempt,
            retry_in=round(delay, 2),
            repeated=repeated,
        )
