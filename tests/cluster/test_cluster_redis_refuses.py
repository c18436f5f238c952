"""Redis answers but will not keep the cluster's state: it refuses writes (full under
``noeviction``), it forgets everything (``FLUSHALL``), or its window holds slots dated in the
future. Each is seen, logged and handled like a lost link, or cleared."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from cluster_helpers import UniqueCalls, cluster_config
from redis_server import RedisServer
from structlog.testing import capture_logs

from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.commands.check_cluster import check_cluster
from kommo_callerid.commands.report import Report
from kommo_callerid.core.models import FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import SyntheticCall

from support import events, running_daemon, wait_for


class _Journal:
    """A journal sink that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call.call_id)


@asynccontextmanager
async def _two_daemons(
    ami: FakeAmiServer, kommo: FakeKommo, redis_url: str, journals: list[_Journal]
) -> AsyncIterator[list[Daemon]]:
    """Daemons a and b on one PBX, each journaling into its own sink, /healthz on."""
    async with AsyncExitStack() as stack:
        daemons = []
        for node, journal in zip(("a", "b"), journals, strict=True):
            http = {"listen": "127.0.0.1:0"}
            config = cluster_config(ami, kommo, redis_url, node, http=http)
            daemon = Daemon(config, journal_sink=journal)
            serving = asyncio.create_task(daemon.serve())
            stack.push_async_callback(_stopped, daemon, serving)
            daemons.append(daemon)
        await ami.wait_logged_in(count=2)
        yield daemons


async def _stopped(daemon: Daemon, serving: asyncio.Task[int]) -> None:
    daemon.stop.set()
    assert await serving == EXIT_OK


async def _health(daemons: list[Daemon]) -> list[str]:
    """Each daemon's /healthz "cluster"."""
    states = []
    async with aiohttp.ClientSession() as client:
        for daemon in daemons:
            url = f"http://127.0.0.1:{daemon.http_port}/healthz"
            async with client.get(url) as answer:
                states.append(str((await answer.json())["cluster"]))
    return states


async def _ring(ami: FakeAmiServer, calls: list[SyntheticCall]) -> dict[str, float]:
    """The calls ring (0.1 s apart); when each rang (time.monotonic), by caller."""
    rang = {}
    for call in calls:
        rang[call.caller_num] = time.monotonic()
        await ami.play(call.events)
        await asyncio.sleep(0.1)
    return rang


async def _hang_up(ami: FakeAmiServer, calls: list[SyntheticCall]) -> None:
    for call in calls:
        await ami.play(call.hangups)


def _notified(kommo: FakeKommo, calls: Iterable[SyntheticCall]) -> Counter[str]:
    """Notifications per caller of ``calls`` (each call has one recipient, the DID's user)."""
    callers = {call.caller_num for call in calls}
    return Counter(e.phone_number for e in kommo.events if e.phone_number in callers)


def _journaled(journals: list[_Journal], calls: Iterable[SyntheticCall]) -> Counter[str]:
    ids = {call.linkedid for call in calls}
    return Counter(c for journal in journals for c in journal.calls if c in ids)


async def _all_done(admin: Any) -> None:
    """Every call's claims are finished in Redis, and every watcher has ticked since."""

    async def claims() -> list[Any]:
        keys = [k for k in await admin.keys("kommo-callerid:claim:*") if not k.endswith(b":sent")]
        return [await admin.get(key) for key in keys]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while any(not (value or b"").startswith(b"done") for value in await claims()):
        assert loop.time() < deadline, "claims not finished in time"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.2)  # the watchers' tick (every second) has read them


def _twice(counts: Counter[str]) -> int:
    return sum(count - 1 for count in counts.values())


def _degraded(logs: list[Any]) -> list[str]:
    return sorted(line["node"] for line in events(logs, "cluster.degraded"))


async def test_redis_full_degrades_at_once_and_restores_when_writes_work(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    # Before: nothing logged, /healthz "ok", every call of the full Redis notified and
    # journaled twice, and the notifications 10 s late (the window's slots could not be
    # released, so they held their place for the whole lease). After: both daemons degrade
    # within a second, then work alone (the documented duplicates), notified within the
    # last beat's promise (< 2.5 s), and come back once Redis takes writes again.
    journals = [_Journal(), _Journal()]
    admin = redis_server.client()
    source = UniqueCalls()
    before, full, after = ([source.next() for _ in range(n)] for n in (3, 6, 3))
    try:
        async with AsyncExitStack() as stack:
            kommo = await stack.enter_async_context(FakeKommo())
            logs = stack.enter_context(capture_logs())
            daemons = await stack.enter_async_context(
                _two_daemons(ami, kommo, redis_server.url, journals)
            )
            await _ring(ami, before)
            await _hang_up(ami, before)
            await wait_for(lambda: len(_journaled(journals, before)) == 3, timeout=10)
            await _all_done(admin)
            # fill Redis, then forbid it to grow: every write that needs memory is refused
            await admin.mset({f"junk:{n}": "x" * 10_000 for n in range(200)})
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", "1mb")
            filled_at = time.monotonic()
            rang = await _ring(ami, full)
            await wait_for(lambda: _degraded(logs) == ["a", "b"], timeout=5)
            seen_in = time.monotonic() - filled_at
            await _hang_up(ami, full)
            await wait_for(lambda: len(_notified(kommo, full)) == 6, timeout=20)
            health_full = await _health(daemons)
            first: dict[str, float] = {}
            for event in kommo.events:
                first.setdefault(event.phone_number, event.received_at)
            delays = [first[call.caller_num] - rang[call.caller_num] for call in full]
            await wait_for(lambda: len(_journaled(journals, full)) == 6, timeout=10)

            await admin.config_set("maxmemory", "0")
            await wait_for(lambda: len(events(logs, "cluster.restored")) == 2, timeout=5)
            await asyncio.sleep(1.5)  # the shared window again, and every claim ticked
            await _ring(ami, after)
            await _hang_up(ami, after)
            await wait_for(lambda: len(_journaled(journals, after)) == 3, timeout=10)
            await asyncio.sleep(1.5)  # a duplicate would have come by now
            health_after = await _health(daemons)
    finally:
        await admin.aclose()
    print(
        f"redis full: degraded after {seen_in:.2f} s, notified {min(delays):.2f}"
        f"-{max(delays):.2f} s after ringing, health {health_full} -> {health_after}, "
        f"twice notified {_twice(_notified(kommo, full))}, journaled "
        f"{_twice(_journaled(journals, full))}"
    )
    assert seen_in < 1.5
    assert all(
        line["reason"].startswith("OutOfMemoryError") for line in events(logs, "cluster.degraded")
    )
    assert health_full == ["degraded", "degraded"] and health_after == ["ok", "ok"]
    assert max(delays) < 3.0  # the last beat's promise (2.5 s), not the 10 s lease
    for calls in (before, after):  # shared: each call once
        assert set(_notified(kommo, calls).values()) == {1}
        assert set(_journaled(journals, calls).values()) == {1}
    assert kommo.violations == 0


async def test_flushall_is_seen_and_handled_like_an_outage(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    # Before: the flush went unseen (no cluster.degraded, /healthz "ok"). After: each daemon
    # degrades as soon as it next asks Redis to decide something, and restores at its next
    # probe; only calls in progress at the flush may be notified twice (as in an outage).
    journals = [_Journal(), _Journal()]
    admin = redis_server.client()
    source = UniqueCalls()
    done, ringing, later = ([source.next() for _ in range(n)] for n in (3, 4, 4))
    try:
        async with AsyncExitStack() as stack:
            kommo = await stack.enter_async_context(FakeKommo())
            logs = stack.enter_context(capture_logs())
            daemons = await stack.enter_async_context(
                _two_daemons(ami, kommo, redis_server.url, journals)
            )
            await _ring(ami, done)
            await _hang_up(ami, done)
            await wait_for(lambda: len(_journaled(journals, done)) == 3, timeout=10)
            await _all_done(admin)
            await _ring(ami, ringing)
            await wait_for(lambda: len(_notified(kommo, ringing)) == 4, timeout=10)
            await asyncio.sleep(1.5)  # every claim ticked

            await admin.flushall()
            flushed_at = time.monotonic()
            await wait_for(lambda: _degraded(logs) == ["a", "b"], timeout=5)
            seen_in = time.monotonic() - flushed_at
            await wait_for(lambda: len(events(logs, "cluster.restored")) == 2, timeout=5)
            await _hang_up(ami, ringing)
            await asyncio.sleep(1.5)  # the shared window again
            await _ring(ami, later)
            await _hang_up(ami, later)
            await wait_for(lambda: len(_journaled(journals, ringing + later)) == 8, timeout=10)
            await asyncio.sleep(1.5)  # a duplicate would have come by now
            health_after = await _health(daemons)
    finally:
        await admin.aclose()
    print(
        f"flushall: degraded after {seen_in:.2f} s, health then {health_after}; "
        f"twice notified: in progress {_twice(_notified(kommo, ringing))}, done "
        f"{_twice(_notified(kommo, done))}, later {_twice(_notified(kommo, later))}; twice "
        f"journaled {_twice(_journaled(journals, done + ringing + later))}"
    )
    reasons = {line["reason"] for line in events(logs, "cluster.degraded")}
    assert all("lost the cluster state" in reason for reason in reasons), reasons
    assert seen_in < 1.5
    assert health_after == ["ok", "ok"]
    for calls in (done, later):
        assert set(_notified(kommo, calls).values()) == {1}
    assert set(_journaled(journals, done + ringing + later).values()) == {1}
    assert max(_notified(kommo, ringing).values()) <= 2  # one extra per extra daemon
    assert kommo.violations == 0


async def test_window_slots_dated_in_the_future_are_cleared(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    # Before: seven slots freeing in an hour (Redis' clock stepped back, or a tampered key)
    # filled the window for that hour: every notification dropped at notify_ttl. After: the
    # window's script drops slots dated beyond a lease from Redis' now.
    admin = redis_server.client()
    source = UniqueCalls()
    calls = [source.next() for _ in range(3)]
    try:
        async with FakeKommo() as kommo:
            config = cluster_config(ami, kommo, redis_server.url, "a", calls={"notify_ttl": 3.0})
            seconds, micros = await admin.time()
            in_an_hour = (seconds + 3600) * 1_000_000 + micros
            window = "kommo-callerid:ratelimit"
            await admin.zadd(window, {f"stale{n}": in_an_hour + n for n in range(7)})
            with capture_logs() as logs:
                async with running_daemon(config):
                    await _ring(ami, calls)
                    settled = lambda: (  # noqa: E731
                        len(_notified(kommo, calls)) + len(events(logs, "kommo.notify_dropped"))
                        >= 3
                    )
                    await wait_for(settled, timeout=15)
            left = await admin.zcount(window, in_an_hour - 1, "+inf")
    finally:
        await admin.aclose()
    dropped = len(events(logs, "kommo.notify_dropped"))
    print(f"future-dated window: notified {len(_notified(kommo, calls))}, dropped {dropped}")
    assert set(_notified(kommo, calls).values()) == {1} and len(_notified(kommo, calls)) == 3
    assert dropped == 0
    assert left == 0


async def test_a_full_redis_at_start_up_is_worked_alone_until_it_takes_writes(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    # Not exit 3 (systemd would not restart it): the daemon starts alone, and check says why.
    admin = redis_server.client()
    await admin.mset({f"junk:{n}": "x" * 10_000 for n in range(200)})
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1mb")
    out = io.StringIO()
    async with FakeKommo() as kommo:
        config = cluster_config(ami, kommo, redis_server.url, "a")
    await check_cluster(config, Report(out, colour=False))
    link = ClusterLink(config.cluster)
    try:
        with capture_logs() as logs:
            await link.connect()
            started_alone = not link.ok
            probe = asyncio.create_task(link.watch())
            await admin.config_set("maxmemory", "0")
            await wait_for(lambda: link.ok, timeout=5)
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
    finally:
        await link.close()
        await admin.aclose()
    assert started_alone
    assert events(logs, "cluster.degraded")[0]["reason"].startswith("OutOfMemoryError")
    assert events(logs, "cluster.restored")
    assert "refuses writes (OutOfMemoryError" in out.getvalue()
