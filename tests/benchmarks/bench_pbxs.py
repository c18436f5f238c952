"""Several PBXs: one daemon watching two fake PBXs. North takes calls at 50/s, first while
south is healthy, then while south is hung (logged in, then silent: its Pings go unanswered,
its logins time out, its supervisor keeps retrying).

Reported: north's latency from a call's Newchannel leaving the fake PBX to the fake Kommo
receiving its DID notification, p50 / p99 / max, both ways. Anything that waited on south would
cost north its ping or connect timeout (1-2 s); the target allows scheduling noise only.
"""

from __future__ import annotations

import asyncio
import time

from common import (
    BENCH_USERS,
    Child,
    Pacer,
    PbxMix,
    Report,
    call_bytes,
    daemon_config,
    percentile,
    spread,
    wait_until,
)

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.recording import format_message

CALLS_PER_SECOND = 50
DID = "5551000"
#: South's timers: long enough that a wait on them would show in north's figures.
SOUTH_TIMERS = {"ping_interval": 1.0, "ping_timeout": 1.0, "connect_timeout": 2.0}


async def burst(north: FakeAmiServer, kommo: FakeKommo, mix: PbxMix, calls: int) -> list[float]:
    """Milliseconds from each call's Newchannel to its notification."""
    first = len(kommo.events)
    sent_at: dict[str, float] = {}
    hangups = []
    pacer = Pacer(1 / CALLS_PER_SECOND)
    for _ in range(calls):
        call = mix.inbound()
        root, *legs = call.events
        north.emit_raw(format_message(root))
        sent_at[call.caller_num] = time.monotonic()  # the fake Kommo's clock
        north.emit_raw(call_bytes(legs))
        hangups.append(call_bytes(call.hangups))
        await pacer.tick()
    north.emit_raw(b"".join(hangups))
    if not await wait_until(lambda: len(kommo.events) - first >= calls, 30):
        raise RuntimeError(f"only {len(kommo.events) - first} of {calls} notifications")
    return [(e.received_at - sent_at[e.phone_number]) * 1000 for e in kommo.events[first:]]


async def run(report: Report, quick: bool) -> None:
    calls = 100 if quick else 1000
    mix = PbxMix()
    async with (
        FakeAmiServer(users=BENCH_USERS) as north,
        FakeAmiServer(users=BENCH_USERS) as south,
        FakeKommo(rate_limit=None) as kommo,
    ):
        config = daemon_config(
            north, kommo, kommo={"rate_limit": 1000}, notify={"to": ["did"], "dids": {DID: [7]}}
        )
        config["ami"] = {
            "username": DEMO_USERNAME,
            "secret": DEMO_SECRET,
            "north": {"port": north.port},
            "south": {"port": south.port, **SOUTH_TIMERS},
        }
        async with Child("daemon", config) as child:
            healthy = await burst(north, kommo, mix, calls)
            south.hang()
            await asyncio.sleep(2.5)  # a Ping went unanswered: south is down, retrying
            hung = await burst(north, kommo, mix, calls)
            tables = await child.ask("stats")
        south.unhang()  # so the fake can close its sessions
    limit = 2 + 1.5 * percentile(healthy, 0.99)
    report.add("north latency, south healthy, p50 / p99 / max", spread(healthy))
    report.add(
        "north latency, south hung, p50 / p99 / max",
        spread(hung),
        f"p99 ≤ 2 ms + 1.5 x healthy p99 ({limit:.2f} ms)",
        percentile(hung, 0.99) <= limit,
    )
    report.add("pbxs run", f"{calls} calls per run at {CALLS_PER_SECOND}/s; sent {tables['sent']}")
