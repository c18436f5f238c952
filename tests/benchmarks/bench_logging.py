"""Log line cost: what the last guards (secret scrubber with token shapes and live tokens,
control-character escaping and caps) add to every line, and the whole rendered line as the
daemon writes it: an inbound call's 13 lines with the call bound in contextvars (as
``_ActiveCall.bind`` does), to a file that is not a terminal (JSON, a write and a flush each).

Runs against an older package too (``PYTHONPATH=/work/main/daemon``) for the before figure:
the guards are then the separate processors the chain had.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Callable
from typing import Any

import structlog
from common import Report

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.logging import SecretScrubber, configure_logging

PLAIN = {
    "event": "call.incoming",
    "exten": "5551000",
    "channel": "PJSIP/trunk-00000a1f",
    "name": "John Doe",
    "call_id": "1700000000.123",
    "caller": "+18305803077",
    "level": "info",
    "timestamp": "2026-12-01T15:00:00.000000Z",
}
HOSTILE = {**PLAIN, "name": "\x1b[2J\x1b[H" + "Mallory " * 30}
CALL = {"call_id": "1700000000.123", "caller": "+18305803077"}
LEG = {"extension": "101", "channel": "PJSIP/101-00000a20", "user": 42}
#: One inbound call of the benchmark's traffic, line for line (event, its own fields).
CALL_LINES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("call.incoming", {"exten": "5551000", "channel": "PJSIP/trunk-00000a1f", "name": "Doe"}),
    *(("call.skipped", {"reason": "internal"}),) * 4,
    *(("call.ringing", LEG),) * 2,
    (
        "kommo.lookup",
        {
            "entity_type": "contacts",
            "entity_id": 123456,
            "name": "John Doe",
            "responsible_user_id": 42,
            "cached": False,
            "ms": 1.234,
            "source": "kommo",
        },
    ),
    *(("kommo.notified", {"users": [42], "ms": 0.8, "attempt": 1, "batch": 1}),) * 3,
    (
        "journal.recorded",
        {"direction": "inbound", "status": 4, "duration": 31, "answered_by": 42},
    ),
    (
        "journal.sent",
        {"count": 1, "ms": 2.5, "calls": [{"call_id": "1700000000.123", "entity_id": 123456}]},
    ),
)


def per_call_us(action: Callable[[], object], rounds: int, repeat: int = 5) -> float:
    """CPU time of this thread (time the machine gave to others does not count), the best of
    ``repeat`` runs: the machine is shared, the least disturbed run is the cost."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(rounds):
            action()
        best = min(best, (time.thread_time() - started) / rounds)
    return best * 1e6


def guards(scrubber: SecretScrubber) -> Callable[[dict[str, Any]], object]:
    """The guards as this package has them: one fused processor, or the old separate two."""
    try:
        from kommo_callerid.core.log_guards import LineGuard
    except ImportError:  # the package before the guards were fused
        from kommo_callerid.core import logging as old

        neutralise: Any = getattr(old, "_neutralise_text")  # noqa: B009
        return lambda line: neutralise(None, "", scrubber(None, "", line))
    guard = LineGuard(scrubber, mask=False)
    return lambda line: guard(None, "", line)


async def run(report: Report, quick: bool) -> None:
    rounds = 5_000 if quick else 50_000
    scrubber = SecretScrubber(["ami-secret-value", "client-secret-value"])
    for n in range(8):  # a scrubber full of rotated tokens
        scrubber.remember(f"def50200{n:04d}" + "ab" * 60)
    guard = guards(scrubber)
    for name, line in (("plain", PLAIN), ("hostile name", HOSTILE)):
        cost = per_call_us(lambda line=line: guard(dict(line)), rounds)
        report.add(f"log guards per line, {name} (scrub + escape + caps)", f"{cost:.1f} µs")
    devnull = await asyncio.to_thread(open, os.devnull, "w")
    with devnull:
        configure_logging(LogConfig(format="json"), secrets=["ami-secret-value"], stream=devnull)
        log = structlog.get_logger("bench")
        for name, line in (("plain", PLAIN), ("hostile name", HOSTILE)):
            fields = {k: v for k, v in line.items() if k not in ("event", "level", "timestamp")}
            whole = per_call_us(lambda fields=fields: log.info("call.incoming", **fields), rounds)
            report.add(f"whole JSON log line, {name} (to /dev/null)", f"{whole:.1f} µs")

        def one_call() -> None:
            for event, fields in CALL_LINES:
                log.info(event, **fields)

        def bound_call() -> None:
            structlog.contextvars.bind_contextvars(**CALL)
            one_call()

        # in a context of its own, as a call's task: the bound fields do not leak out
        context = contextvars.copy_context()
        calls = max(1, rounds // len(CALL_LINES))
        whole = per_call_us(lambda: context.run(bound_call), calls) / len(CALL_LINES)
        report.add(
            f"whole JSON log line, an inbound call's {len(CALL_LINES)} lines (call bound)",
            f"{whole:.1f} µs",
        )
