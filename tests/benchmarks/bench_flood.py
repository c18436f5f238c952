"""Flood (issue 13, point 1): N new inbound calls in one burst, no Hangups, against a fake
Kommo that allows 7 requests/s, as the real one does; the daemon keeps its defaults
(7 requests/s, notify_ttl 45 s, to = ringing/did/responsible, fallback "all" after 3 s, no
DIDs: a call is notified once its lookup or the fallback says whom to). A real call from a
known caller is placed ``REAL_CALL_AFTER`` s after the burst was sent.

Reported per size: time from placing the real call to its first notification, peak RSS
during the flood, RSS ``SETTLE`` s after the burst (after a garbage collection; every stale
request has expired by then), then RSS and live Python objects (allocated blocks) once the
flood's calls have hung up, and, in a second run with the backlog still there, the stop
time (the stop request does what SIGTERM's handler does: set the stop event).

Sizes 1,000 and 3,000; 100,000 with ``run.py --full`` (a few minutes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from common import BENCH_USERS, Child, Report, daemon_config, wait_until

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import format_message
from kommo_callerid.sim.scenarios import CallScenarios

KOMMO_RATE = 7
REAL_CALL_AFTER = 10.0
SETTLE = 60.0
REAL_CALLER = "18305803077"  # in the demo dataset: a known contact
SAMPLE_EVERY = 0.5
#: Seconds from sending the flood's Hangups to the last measure.
HUNG_UP_SETTLE = 10.0
#: Set by ``run.py --full``: also the 100,000-call flood.
FULL = False


async def run(report: Report, quick: bool) -> None:
    sizes = (300,) if quick else (1_000, 3_000, *((100_000,) if FULL else ()))
    for size in sizes:
        figures = await _flood(size, settle=10.0 if quick else SETTLE)
        stop_s = await _stop_with_backlog(size)
        first = figures["first_notification_s"]
        report.add(
            f"flood {size:,}: real call notified after",
            "never" if first is None else f"{first:.2f} s",
            "≤ 5 s",
            first is not None and first <= 5,
        )
        report.add(
            f"flood {size:,}: RSS before / peak / {figures['settle']:.0f} s after the burst",
            f"{figures['rss_before']:.0f} / {figures['rss_peak']:.0f} / "
            f"{figures['rss_after']:.0f} MB",
        )
        report.add(
            f"flood {size:,}: daemon CPU until {figures['settle']:.0f} s after",
            f"{figures['cpu_s']:.1f} s",
        )
        report.add(
            f"flood {size:,}: its calls hung up: RSS / live blocks before → after / tracked",
            f"{figures['rss_hung_up']:.0f} MB / {figures['blocks_before']:,} → "
            f"{figures['blocks_hung_up']:,} / {figures['tracked_hung_up']}",
        )
        report.add(
            f"flood {size:,}: sent / dropped (by reason) / AMI events dropped",
            f"{figures['sent']} / {figures['dropped']} / {figures['ami_dropped']}",
        )
        report.add(
            f"flood {size:,}: stop with the backlog", f"{stop_s:.2f} s", "≤ 5 s", stop_s <= 5
        )


def _burst(size: int, scenarios: CallScenarios) -> tuple[bytes, bytes]:
    """The flood's Newchannels, and the Hangups that end its calls."""
    calls = [scenarios.inbound(f"1{n:010d}", agents=()) for n in range(size)]
    starts = b"".join(format_message(event) for call in calls for event in call.events)
    return starts, b"".join(format_message(event) for call in calls for event in call.hangups)


def _config(ami: FakeAmiServer, kommo: FakeKommo) -> dict[str, Any]:
    return daemon_config(ami, kommo)


async def _flood(size: int, settle: float) -> dict[str, Any]:
    scenarios = CallScenarios()  # one: unique Uniqueids for the burst and the real call
    burst, hangups = _burst(size, scenarios)
    real = scenarios.inbound(REAL_CALLER, did="5552000", agents=())
    async with (
        FakeAmiServer(users=BENCH_USERS) as ami,
        FakeKommo(demo_dataset(), rate_limit=KOMMO_RATE) as kommo,
        Child("daemon", _config(ami, kommo)) as child,
    ):
        before = await child.ask("memory")
        rss_before = before["rss_mb"]
        sent_at = time.monotonic()
        await ami.stream(burst)
        peak = rss_before
        while time.monotonic() < sent_at + REAL_CALL_AFTER:
            peak = max(peak, (await child.ask("stats"))["rss_mb"])
            await asyncio.sleep(SAMPLE_EVERY)
        placed = time.monotonic()
        ami.emit_raw(b"".join(format_message(e) for e in real.events))
        notified = await wait_until(
            lambda: any(e.phone_number == REAL_CALLER for e in kommo.events), 60, poll=0.01
        )
        first = time.monotonic() - placed if notified else None
        while time.monotonic() < sent_at + settle:
            peak = max(peak, (await child.ask("stats"))["rss_mb"])
            await asyncio.sleep(SAMPLE_EVERY)
        after = await child.ask("memory")
        await ami.stream(hangups)
        await asyncio.sleep(HUNG_UP_SETTLE)
        hung_up = await child.ask("memory")
    ami_dropped = after.get("ami_dropped", "?")
    return {
        "first_notification_s": first,
        "rss_before": rss_before,
        "rss_peak": max(peak, after["rss_mb"]),
        "rss_after": after["rss_mb"],
        "settle": settle,
        "sent": after["sent"],
        "dropped": after["dropped"],
        "ami_dropped": ami_dropped,
        "cpu_s": after["cpu_s"],
        "rss_hung_up": hung_up["rss_mb"],
        "blocks_before": before["blocks"],
        "blocks_hung_up": hung_up["blocks"],
        "tracked_hung_up": hung_up["tracker"] + hung_up["outcomes"],
    }


async def _stop_with_backlog(size: int) -> float:
    async with (
        FakeAmiServer(users=BENCH_USERS) as ami,
        FakeKommo(demo_dataset(), rate_limit=KOMMO_RATE) as kommo,
        Child("daemon", _config(ami, kommo)) as child,
    ):
        await ami.stream(_burst(size, CallScenarios())[0])
        await asyncio.sleep(4.0)  # the calls are read, the fallbacks have queued up
        return await child.stop()
