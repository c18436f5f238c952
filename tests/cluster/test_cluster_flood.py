"""A call flood in cluster mode (issue 13 point 1, issue 12): two daemons on one Redis and
one fake AMI, 1,000 inbound calls in a burst with no Hangups, a Kommo allowing 7/s.

A real call placed after the burst is notified within seconds, with no rate violation, and
every stale request leaves the shared limiter's queue without a slot; the daemons stop within
``shutdown_timeout``. The flood does not degrade the cluster link: the claims of the 1,000
calls are renewed and watched in one Redis round trip per tick, not one per call, so the
commands Redis sees per second stay bounded. Real sockets, real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from cluster_helpers import DID, DID_USER
from redis_server import Monitor, RedisServer
from structlog.testing import capture_logs

from kommo_callerid.cluster.claim_scripts import TICK
from kommo_callerid.cluster.claims import CLAIM_TTL, Claims
from kommo_callerid.cluster.link import GUARD
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.recording import format_message
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, wait_for

FLOOD = 1_000
REAL_CALLER = "14155550199"
NOTIFY_TTL = 4.0
SHUTDOWN_TIMEOUT = 1.0
#: Slack on a stop's ``shutdown_timeout`` for a loaded 2-core machine.
STOP_SLACK = 1.0
#: How long a stop may hang before the test fails, showing where every task waits.
STOP_LIMIT = 15.0
#: A notify_ttl long enough that the flood's claims are all held and watched for a while.
HELD_TTL = 12.0
#: How long the commands are counted while they are, from SETTLE s after the calls' lookups
#: began.
SETTLE = 0.5
WINDOW = 3.0


@dataclass
class Flooded:
    kommo: FakeKommo
    #: Where the flood's calls came from: a later call from it has an id of its own.
    scenarios: CallScenarios
    daemons: list[Daemon]
    serving: list[asyncio.Task[int]]
    #: The commands the daemons sent Redis from just before the flood on.
    monitor: Monitor

    async def stop(self) -> float:
        """Stop both daemons at once (exit 0 asserted); the seconds that took."""
        started = time.monotonic()
        for daemon in self.daemons:
            daemon.stop.set()
        _, stuck = await asyncio.wait(self.serving, timeout=STOP_LIMIT)
        if stuck:
            _print_tasks()
            raise AssertionError(f"the daemons did not stop in {STOP_LIMIT} s")
        codes = [task.result() for task in self.serving]
        took = time.monotonic() - started
        assert codes == [EXIT_OK, EXIT_OK]
        return took


@asynccontextmanager
async def flooded(
    ami: FakeAmiServer, redis_server: RedisServer, notify_ttl: float = NOTIFY_TTL
) -> AsyncIterator[Flooded]:
    """Two daemons have read the burst of FLOOD calls; the commands they send Redis are
    counted until the block ends. The daemons are stopped on the way out unless the block
    did."""
    scenarios = CallScenarios()
    burst = b"".join(
        format_message(event)
        for n in range(FLOOD)
        for event in scenarios.inbound(f"1830{n:07d}", did=DID, agents=()).events
    )
    async with AsyncExitStack() as stack:
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=7))
        monitor = Monitor(redis_server)
        state = Flooded(kommo, scenarios, [], [], monitor)
        for node in ("a", "b"):
            config = make_config(
                ami,
                kommo,
                cluster={"redis_url": redis_server.url, "node": node, "expected_nodes": 2},
                notify={"dids": {DID: [DID_USER]}, "to": ["did"]},
                kommo={"rate_limit": 7.0},
                calls={"notify_ttl": notify_ttl},
                daemon={"shutdown_timeout": SHUTDOWN_TIMEOUT},
            )
            daemon = Daemon(config)
            state.daemons.append(daemon)
            state.serving.append(asyncio.create_task(daemon.serve(), name=f"daemon-{node}"))
        stack.push_async_callback(_stop_unless_stopped, state)
        await ami.wait_logged_in(count=2)
        await stack.enter_async_context(monitor)
        ami.emit_raw(burst)
        for daemon in state.daemons:
            await wait_for(lambda d=daemon: _events(d) >= FLOOD, timeout=30)
        yield state


async def test_a_real_call_after_a_cluster_flood_is_notified_within_seconds(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    async with flooded(ami, redis_server) as flood:
        real = flood.scenarios.inbound(REAL_CALLER, did=DID, agents=())
        await asyncio.sleep(1.0)
        placed = time.monotonic()
        await ami.play(real.events)
        kommo = flood.kommo
        await wait_for(lambda: any(e.phone_number == REAL_CALLER for e in kommo.events), timeout=5)
        notified_after = time.monotonic() - placed
        # after notify_ttl every stale request has left the shared queue without a slot
        for daemon in flood.daemons:
            await wait_for(lambda d=daemon: d.table_sizes()["limiter_waiting"] == 0, timeout=8)
        stop_took = await flood.stop()
    print(
        f"\ncluster flood: the real call was notified after {notified_after:.2f} s; "
        f"both daemons stopped in {stop_took:.2f} s"
    )
    assert notified_after < 5.0, notified_after  # alone: 1.5-3.7 s on 2 shared cores
    assert kommo.violations == 0
    assert stop_took < SHUTDOWN_TIMEOUT + STOP_SLACK, stop_took


async def test_a_cluster_flood_keeps_the_link_and_redis_commands_bounded(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    with capture_logs() as logs:
        async with flooded(ami, redis_server, notify_ttl=HELD_TTL) as flood:
            claims = [_claims(daemon) for daemon in flood.daemons]
            # every call begun, its claim held by one daemon and watched by the other
            await wait_for(lambda: _claimed(claims) >= FLOOD, timeout=10)
            claimed = _claimed(claims)
            # the calls' own commands first: each owned call's lookup asks who leads it
            await wait_for(lambda: flood.monitor.by_name["set"] >= FLOOD, timeout=15)
            await asyncio.sleep(SETTLE)
            start, before = time.monotonic(), Counter(flood.monitor.by_name)
            await asyncio.sleep(WINDOW)
            took = time.monotonic() - start
            window = flood.monitor.by_name - before
            busiest = flood.monitor.busiest_second()
            sent = flood.monitor.by_name
            print(
                f"\ncluster flood: the daemons sent Redis {sum(sent.values())} commands, at "
                f"most {busiest} in one second: {dict(sent.most_common())}; while "
                f"{claimed} claims were held or watched {sum(window.values()) / took:.0f}/s: "
                f"{dict(window.most_common())}"
            )
            stop_took = await flood.stop()
    print(f"cluster flood: both daemons stopped in {stop_took:.2f} s")
    assert not events(logs, "cluster.degraded")
    # Before the ticker, the pool ran dry and every tick failed. One tick may still miss
    # its 0.5 s socket timeout on a saturated machine (seen with two test runs and two busy
    # loops on 2 cores); it is retried after ttl / 6 and no claim lapses from one miss.
    assert len(events(logs, "cluster.claims_tick_failed")) <= 1
    # Renewing and watching every claim is one call per tick (ttl / 3) and daemon; before it
    # was a renewal per held claim and a claim and a read per watched one each tick, some
    # 1,500 calls a second for these 1,000 claims.
    ticks = window[f"evalsha:{_sha(GUARD + TICK)}"]
    assert ticks <= 2 * (WINDOW / (CLAIM_TTL / 3) + 1), window
    # What else is sent meanwhile: the rate limiter's asks and each notified call's record.
    assert sum(window.values()) / took < 800, window  # 44-507/s measured; 1,050/s before
    # Per call, not per second: how many land in one second depends on the machine's speed
    # (4,205 in a second failed a loaded CI run); what each call costs does not (about 5).
    assert sum(sent.values()) < 8 * FLOOD, sent
    assert stop_took < SHUTDOWN_TIMEOUT + STOP_SLACK, stop_took


def _claims(daemon: Daemon) -> Claims:
    running = daemon._running
    assert running is not None and running.cluster is not None
    return running.cluster.claims


def _print_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()} (cancelling: {task.cancelling()})")
        task.print_stack(limit=30)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()[:8]


def _claimed(claims: list[Claims]) -> int:
    return sum(c.holding + c.watching for c in claims)


def _events(daemon: Daemon) -> int:
    running = daemon._running
    return running.events if running is not None else 0


async def _stop_unless_stopped(state: Flooded) -> None:
    if not all(task.done() for task in state.serving):
        await state.stop()
