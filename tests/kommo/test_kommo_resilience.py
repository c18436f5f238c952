"""Kommo under stress, over real sockets: bursts, outages, 429 and 403, retries bounded by the
call's ``notify_ttl``."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import NotifyOutcome
from kommo_callerid.core.waiters import SlotExpired
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.limits import (
    GateClosed,
    Priority,
    RateLimiter,
    RequestGate,
)
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, EVENTS_PATH, PROBLEM_JSON, FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios

from support import ManualClock, events, make_config, running_daemon, wait_for

JOHN = "18305803077"


def digits(number: str) -> str:
    return "".join(char for char in number if char.isdigit())


def most_in_any_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + window) for start in ordered)


# -- the daemon: bursts and outages ----------------------------------------------------------


async def test_burst_of_100_calls_in_a_second_stays_within_the_rate_limit(
    ami: FakeAmiServer,
) -> None:
    # 7 req/s scaled by 7 (49 req/s, TTL 45 s / 7) keeps the test short; the ratio of calls to
    # the limit is the issue's. tests/benchmarks/bench_kommo_burst.py runs it at 7 req/s.
    loop = asyncio.get_running_loop()
    calls = CallScenarios().inbound_calls(100)
    async with FakeKommo(rate_limit=49) as kommo:
        config = make_config(ami, kommo, kommo={"rate_limit": 49}, calls={"notify_ttl": 6.5})
        async with running_daemon(config):
            started: dict[str, float] = {}
            for call in calls:
                started[call.caller_num] = loop.time()
                await ami.play(call.events)
                await asyncio.sleep(1 / 100)
            await wait_for(lambda: len({e.phone_number for e in kommo.events}) == 100, 10)
    assert kommo.violations == 0
    assert most_in_any_window([r.at for r in kommo.requests]) <= 49
    per_caller = Counter(event.phone_number for event in kommo.events)
    assert set(per_caller.values()) == {1}
    late = [e for e in kommo.events if e.received_at - started[digits(e.phone_number)] > 6.5]
    assert late == []


async def test_500s_for_3_seconds_then_every_call_notified_once(ami: FakeAmiServer) -> None:
    async with FakeKommo() as kommo:
        config = make_config(ami, kommo, calls={"notify_ttl": 10.0})
        kommo.outage(500, 3.0)
        with capture_logs() as logs:
            async with running_daemon(config):
                for call in CallScenarios().inbound_calls(5):
                    await ami.play(call.events)
                await wait_for(lambda: len(kommo.events) == 5, 10)
                await asyncio.sleep(0.5)  # nothing more arrives
    assert len(kommo.events) == 5
    assert set(Counter(e.phone_number for e in kommo.events).values()) == {1}
    assert any(r.status == 500 for r in kommo.requests)
    assert events(logs, "kommo.notify_dropped") == []
    # the retries were logged, not every one of them
    assert 1 <= len(events(logs, "kommo.error")) < kommo.requests_to(EVENTS_PATH)


async def test_outage_longer_than_the_ttl_drops_each_call_once(ami: FakeAmiServer) -> None:
    async with FakeKommo() as kommo:
        config = make_config(ami, kommo, calls={"notify_ttl": 1.0})
        kommo.outage(503, 30.0)
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                for call in CallScenarios().inbound_calls(3):
                    await ami.play(call.events)
                await wait_for(lambda: len(events(logs, "kommo.notify_dropped")) == 3, 5)
                await asyncio.sleep(1.0)  # past every TTL: nothing is sent later
                stats = daemon._running.notifier.stats if daemon._running else None
    dropped = events(logs, "kommo.notify_dropped")
    assert [line["reason"] for line in dropped] == ["ttl"] * 3
    assert kommo.events == []
    assert stats is not None and stats.dropped == {"ttl": 3}


# -- the client: 429, 403 ----------------------------------------------------------------------


def client_for(fake: FakeKommo, clock: ManualClock | None = None) -> KommoClient:
    config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(fake.token))
    if clock is None:
        return KommoClient(config, CacheConfig())
    return KommoClient(config, CacheConfig(), clock=clock, sleep=clock.sleep)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKommo]:
    async with FakeKommo() as server:
        yield server


async def test_429_with_an_html_body_is_retried(fake: FakeKommo) -> None:
    html = "<html><h1>Too Many Requests</h1></html>"
    fake.fail_next(EVENTS_PATH, 429, html, content_type="text/html", times=2)
    with capture_logs() as logs:
        async with client_for(fake) as kommo:
            assert await kommo.notify(JOHN, [1], within=10) is NotifyOutcome.SENT
    [notified] = events(logs, "kommo.notified")
    assert notified["attempt"] == 3
    [error] = events(logs, "kommo.error")  # the second 429 within 10 s is only counted
    assert (error["status"], error["endpoint"]) == (429, EVENTS_PATH)
    assert error["detail"] == "HTTP 429 (text/html)"


async def test_429_retry_after_pauses_every_request(fake: FakeKommo) -> None:
    body = json.dumps({"title": "Too Many Requests", "status": 429, "retry_after": 0.6})
    fake.fail_next(EVENTS_PATH, 429, body, content_type=PROBLEM_JSON)
    async with client_for(fake) as kommo:
        notify = asyncio.create_task(kommo.notify(JOHN, [1], within=10))
        await wait_for(lambda: fake.requests_to(EVENTS_PATH) == 1)
        await asyncio.sleep(0.05)
        await kommo.lookup(JOHN)  # held by the global pause too
        assert await notify is NotifyOutcome.SENT
    first, lookup, retry = fake.requests
    assert (first.path, lookup.path, retry.path) == (EVENTS_PATH, BY_PHONE_PATH, EVENTS_PATH)
    assert lookup.at - first.at >= 0.55 and retry.at - first.at >= 0.55


async def test_403_pauses_everything_until_kommo_accepts_a_request_again(
    fake: FakeKommo,
) -> None:
    clock = ManualClock()
    blocked = json.dumps({"title": "Forbidden", "status": 403, "detail": "Account is blocked"})
    fake.fail_next(EVENTS_PATH, 403, blocked, content_type=PROBLEM_JSON, times=3)
    with capture_logs() as logs:
        async with client_for(fake, clock) as kommo:
            outcomes = await asyncio.gather(
                *(kommo.notify(JOHN, [n], within=300) for n in (1, 2, 3))
            )
            assert not kommo.blocked
    assert outcomes == [NotifyOutcome.SENT] * 3
    assert [record.status for record in fake.requests] == [403, 403, 403, 200, 200, 200]
    [error] = events(logs, "kommo.error")  # once per minute
    assert error["status"] == 403 and "blocked" in error["detail"]
    assert clock.now - 1_000 >= RequestGate.BLOCK_MIN / 2  # the client paused


async def test_while_blocked_a_single_probe_goes_out_at_a_time() -> None:
    clock = ManualClock()
    gate = RequestGate(clock=clock, sleep=clock.sleep)
    await gate.enter(deadline=2_000)
    gate.leave(403)
    assert gate.blocked
    # (the manual clock races ahead while they poll, hence the far deadline)
    probes = [asyncio.create_task(gate.enter(deadline=1e12)) for _ in range(3)]
    await wait_for(lambda: sum(p.done() for p in probes) == 1)
    await asyncio.sleep(0.05)
    assert sum(p.done() for p in probes) == 1  # the others wait for the probe's answer
    assert clock.now >= 1_000 + RequestGate.BLOCK_MIN / 2
    gate.leave(200)
    await asyncio.gather(*probes)
    assert not gate.blocked


async def test_a_gate_wait_ends_at_the_deadline() -> None:
    clock = ManualClock()
    gate = RequestGate(clock=clock, sleep=clock.sleep)
    await gate.enter(deadline=2_000)
    gate.leave(429, pause=30.0)
    with pytest.raises(GateClosed):
        await gate.enter(deadline=clock.now + 10)


async def test_403_longer_than_the_ttl_is_dropped_without_hammering(fake: FakeKommo) -> None:
    clock = ManualClock()
    fake.fail_next(EVENTS_PATH, 403, "forbidden", times=100)
    with capture_logs() as logs:
        async with client_for(fake, clock) as kommo:
            outcomes = await asyncio.gather(
                *(kommo.notify(JOHN, [n], within=45) for n in range(1, 11))
            )
    assert set(outcomes) == {NotifyOutcome.DROPPED_TTL}
    assert fake.requests_to(EVENTS_PATH) <= 10 + 4  # the first wave, then ~one probe per pause
    assert len(events(logs, "kommo.notify_dropped")) == 10


# -- the rate limiter in a flood (issue 13, point 1) -------------------------------------------


async def test_expired_waiters_leave_without_using_a_slot() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()
    served: list[str] = []

    async def hold() -> None:
        async with limiter.slot():
            await release.wait()

    async def use(name: str, deadline: float) -> None:
        async with limiter.slot(Priority.NOTIFY, deadline):
            served.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    stale = [asyncio.create_task(use(f"stale-{n}", clock() + 5)) for n in range(500)]
    await asyncio.sleep(0)
    assert limiter.waiting == 500
    clock.advance(10)  # every stale deadline has passed while the slot was held
    fresh = asyncio.create_task(use("fresh", clock() + 5))
    await asyncio.sleep(0)
    assert limiter.waiting == 1 and limiter.expired == 500
    release.set()
    results = await asyncio.gather(*stale, return_exceptions=True)
    await asyncio.gather(holder, fresh)
    assert all(isinstance(r, SlotExpired) for r in results)
    assert served == ["fresh"]  # the stale ones never took a slot
    assert clock() - 1_010 <= 1.0  # the fresh one went out one period after the release


async def test_a_backlog_serves_the_newest_first_and_auth_before_all() -> None:
    clock = ManualClock()
    limiter = RateLimiter(2, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()
    served: list[str] = []

    async def hold() -> None:
        async with limiter.slot():
            await release.wait()

    async def use(name: str, priority: Priority = Priority.NOTIFY) -> None:
        async with limiter.slot(priority, clock() + 60):
            served.append(name)

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    names = [f"call-{n}" for n in range(10)]
    waiters = [asyncio.create_task(use(name)) for name in names]
    await asyncio.sleep(0)
    waiters.append(asyncio.create_task(use("token", Priority.AUTH)))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*holders, *waiters)
    # the first 2 s of backlog (4 waiters) in order; beyond that, newest first
    newest_first = [f"call-{n}" for n in range(9, 3, -1)]
    assert served == ["token", *newest_first, *names[:4]]


async def test_cancelling_twenty_thousand_waiters_leaves_the_limiter_empty() -> None:
    clock = ManualClock()
    limiter = RateLimiter(7, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot():
            await release.wait()

    async def wait_in_line() -> None:
        async with limiter.slot(Priority.LOOKUP, clock() + 45):
            pass

    holders = [asyncio.create_task(hold()) for _ in range(7)]
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(wait_in_line()) for _ in range(20_000)]
    await asyncio.sleep(0)
    assert limiter.waiting == 20_000
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert limiter.waiting == 0
    release.set()
    await asyncio.gather(*holders)
    async with limiter.slot(Priority.NOTIFY, clock() + 5):
        pass  # the limiter still serves
