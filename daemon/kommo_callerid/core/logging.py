"""One structlog processor chain for the daemon's own lines and for the stdlib records of
panoramisk and aiohttp: JSON lines on stdout (or a console view on a terminal).

Per-call fields (``call_id``, ``caller``) come from structlog's contextvars, bound by the
daemon around everything it does for one call. With ``mask_numbers`` the caller's number is
shortened in every line; known secret values are scrubbed from every line as a last guard.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from kommo_callerid.core.config import LogConfig

#: Fields that carry a phone number and are masked when ``mask_numbers`` is on.
NUMBER_FIELDS = ("caller", "number", "phone_number")
#: Libraries that are chatty at INFO; they log at WARNING unless the level is debug.
QUIET_LIBRARIES = ("panoramisk", "aiohttp.access")


def mask_number(number: str) -> str:
    """``+18305803077`` -> ``+1830***3077``: enough to recognise, not enough to dial."""
    if len(number) <= 6:
        return "***"
    head = 5 if len(number) > 9 else 2
    return f"{number[:head]}***{number[-4:]}"


def _mask_numbers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in NUMBER_FIELDS:
        value = event_dict.get(key)
        if isinstance(value, str) and value:
            event_dict[key] = mask_number(value)
    return event_dict


class _SecretScrubber:
    """Replaces any known secret value that reached a log line (it never should).

    One regex search over all string fields at once keeps the common case (no secret) cheap.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        found = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, found))) if found else None

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        pattern = self._pattern
        if pattern is None:
            return event_dict
        texts = [value for value in event_dict.values() if isinstance(value, str)]
        if pattern.search("\0".join(texts)):
            for key, value in event_dict.items():
                if isinstance(value, str):
                    event_dict[key] = pattern.sub("**********", value)
        return event_dict


class _SafeWriteLogger(structlog.WriteLogger):
    """Writes a rendered line; a closed or broken stdout must never stop the daemon."""

    def msg(self, message: str) -> None:
        # as the stdlib handlers do: losing a log line beats losing the process
        with contextlib.suppress(OSError, ValueError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _drop_stdlib_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_from_structlog", None)
    event_dict.pop("_record", None)
    return event_dict


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(
    config: LogConfig, *, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Install the chain for structlog and the stdlib root logger (idempotent).

    The daemon's own lines take structlog's native path (a filtering bound logger writing
    straight to the stream: a few microseconds a line, next to nothing for a filtered debug
    line); the stdlib records of panoramisk and aiohttp go through the same processors via
    ``ProcessorFormatter``, so every line looks alike.
    """
    stream = stream or sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if config.mask_numbers:
        shared.append(_mask_numbers)
    shared.append(_SecretScrubber(secrets))
    level = getattr(logging, config.level.upper())
    renderer = _renderer(config.format, stream)
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=lambda *_: _SafeWriteLogger(stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:1], structlog.stdlib.add_logger_name, *shared[1:]],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_stdlib_noise,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
