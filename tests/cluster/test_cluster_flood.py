"""A call flood in cluster mode (issue 13 point 1, issue 12): two daemons on one Redis and
one fake AMI, 1,000 inbound calls in a burst with no Hangups, a Kommo allowing 7/s. A real
call placed after the burst is notified within seconds, with no rate violation, and every
stale request leaves the shared limiter's queue without a slot. Real sockets, real Redis."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from cluster_helpers import DID, DID_USER
from redis_server import RedisServer

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.recording import format_message
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for

FLOOD = 1_000
REAL_CALLER = "14155550199"


async def test_a_real_call_after_a_cluster_flood_is_notified_within_seconds(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    scenarios = CallScenarios()
    burst = b"".join(
        format_message(event)
        for n in range(FLOOD)
        for event in scenarios.inbound(f"1830{n:07d}", did=DID, agents=()).events
    )
    real = scenarios.inbound(REAL_CALLER, did=DID, agents=())
    async with AsyncExitStack() as stack:
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=7))
        daemons = []
        for node in ("a", "b"):
            config = make_config(
                ami,
                kommo,
                cluster={"redis_url": redis_server.url, "node": node, "expected_nodes": 2},
                notify={"dids": {DID: [DID_USER]}, "to": ["did"]},
                kommo={"rate_limit": 7.0},
                calls={"notify_ttl": 4.0},
                daemon={"shutdown_timeout": 1.0},
            )
            daemons.append(await stack.enter_async_context(running_daemon(config)))
        await ami.wait_logged_in(count=2)
        ami.emit_raw(burst)
        for daemon in daemons:
            running = daemon._running
            assert running is not None
            await wait_for(lambda running=running: running.events >= FLOOD, timeout=30)
        await asyncio.sleep(1.0)
        placed = time.monotonic()
        await ami.play(real.events)
        await wait_for(lambda: any(e.phone_number == REAL_CALLER for e in kommo.events), timeout=5)
        notified_after = time.monotonic() - placed
        # after notify_ttl every stale request has left the shared queue without a slot
        for daemon in daemons:
            await wait_for(lambda d=daemon: d.table_sizes()["limiter_waiting"] == 0, timeout=8)
    print(f"\ncluster flood: the real call was notified after {notified_after:.2f} s")
    assert notified_after < 5.0, notified_after  # alone: 1.5-3.7 s on 2 shared cores
    assert kommo.violations == 0
