"""Log line cost: what the last guards (secret scrubber with token shapes and live tokens,
control-character escaping and caps) add to every line, next to the whole rendered line."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import structlog
from common import Report

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.logging import SecretScrubber, _neutralise_text, configure_logging

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


def per_call_us(action: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        action()
    return (time.perf_counter() - started) / rounds * 1e6


async def run(report: Report, quick: bool) -> None:
    rounds = 5_000 if quick else 50_000
    scrubber = SecretScrubber(["ami-secret-value", "client-secret-value"])
    for n in range(8):  # a scrubber full of rotated tokens
        scrubber.remember(f"def50200{n:04d}" + "ab" * 60)
    for name, line in (("plain", PLAIN), ("hostile name", HOSTILE)):
        guards = per_call_us(
            lambda line=line: _neutralise_text(None, "", scrubber(None, "", dict(line))), rounds
        )
        report.add(f"log guards per line, {name} (scrub + escape + caps)", f"{guards:.1f} µs")
    devnull = await asyncio.to_thread(open, os.devnull, "w")
    with devnull:
        configure_logging(LogConfig(format="json"), secrets=["ami-secret-value"], stream=devnull)
        log = structlog.get_logger("bench")
        for name, line in (("plain", PLAIN), ("hostile name", HOSTILE)):
            fields = {k: v for k, v in line.items() if k not in ("event", "level", "timestamp")}
            whole = per_call_us(lambda fields=fields: log.info("call.incoming", **fields), rounds)
            report.add(f"whole JSON log line, {name} (to /dev/null)", f"{whole:.1f} µs")
