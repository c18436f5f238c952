"""Burst: 500 calls within one second against a fake Kommo that allows 7 requests/s, as the
real one does. The daemon keeps its default limits (7 requests/s, notify_ttl 45 s); every
call's DID users are notified (one notification per call), lookups queue behind them.

Reported: how many were notified and how many dropped (by reason), when the last one
arrived, the fake's rate-limit violations, and the deepest queues seen (sampled every 0.2 s).
"""

from __future__ import annotations

import asyncio
import time

from common import BENCH_USERS, Child, PbxMix, Report, call_bytes, daemon_config

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

KOMMO_RATE = 7
SAMPLE_EVERY = 0.2


async def run(report: Report, quick: bool) -> None:
    calls = 50 if quick else 500
    mix = PbxMix()
    burst = [mix.inbound(agents=("100",)) for _ in range(calls)]
    async with FakeAmiServer(users=BENCH_USERS) as ami, FakeKommo(rate_limit=KOMMO_RATE) as kommo:
        config = daemon_config(ami, kommo, notify={"dids": {"5551000": [7]}})
        async with Child("daemon", config) as child:
            started = time.monotonic()
            for tenth in range(10):  # ten slices, 0.1 s apart: all within one second
                for call in burst[tenth::10]:
                    ami.emit_raw(call_bytes(call.events))
                await asyncio.sleep(0.1)
            peaks = await _watch(child, calls)
            ami.emit_raw(b"".join(call_bytes(call.hangups) for call in burst))
            tables = await child.ask("stats")
    last = max((e.received_at for e in kommo.events), default=started) - started
    dropped = tables["dropped"]
    report.add(
        "burst: calls notified / dropped",
        f"{len(kommo.events)} / {sum(dropped.values())} {dropped or ''} of {calls}",
    )
    report.add("burst: time until the last notification", f"{last:.1f} s")
    report.add("burst: rate-limit violations", str(kommo.violations), "0", kommo.violations == 0)
    report.add(
        "burst: deepest queues (events / limiter waiting / tasks)",
        f"{peaks['queue']} / {peaks['limiter_waiting']} / {peaks['tasks']}",
    )


async def _watch(child: Child, calls: int) -> dict[str, int]:
    """Sample the child until every call's notification was sent or dropped."""
    peaks = {"queue": 0, "limiter_waiting": 0, "tasks": 0}
    deadline = time.monotonic() + 45 + calls / KOMMO_RATE + 30
    while time.monotonic() < deadline:
        tables = await child.ask("stats")
        peaks = {name: max(peak, tables[name]) for name, peak in peaks.items()}
        if tables["sent"] + sum(tables["dropped"].values()) >= calls:
            break
        await asyncio.sleep(SAMPLE_EVERY)
    return peaks
