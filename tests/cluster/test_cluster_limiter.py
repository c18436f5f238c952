"""The shared sliding window on a real Redis: its bound across daemons, priority, and its
queue in a flood (expired waiters leave without a slot; leaving is O(1))."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from cluster_helpers import most_in_any_window
from redis_server import RedisServer

from kommo_callerid.cluster.limiter import SharedRateLimiter
from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.core.config import ClusterConfig
from kommo_callerid.core.waiters import SlotExpired
from kommo_callerid.kommo.limits import Priority, RateLimiter

from support import wait_for


@pytest.fixture
async def limiters(redis_server: RedisServer) -> AsyncIterator[list[SharedRateLimiter]]:
    links = [ClusterLink(ClusterConfig(redis_url=redis_server.url, node=f"n{i}")) for i in range(3)]
    for link in links:
        await link.connect()  # the cluster's epoch (the window's script checks it)
    alone = [RateLimiter(3, clock=time.monotonic, sleep=asyncio.sleep) for _ in links]
    yield [
        SharedRateLimiter(link, 7, local, lease=10.0)
        for link, local in zip(links, alone, strict=True)
    ]
    for link in links:
        await link.close()


async def test_three_limiters_share_seven_a_second(limiters: list[SharedRateLimiter]) -> None:
    starts: list[float] = []

    async def request(limiter: SharedRateLimiter) -> None:
        async with limiter.slot(Priority.LOOKUP):
            starts.append(time.monotonic())
            await asyncio.sleep(0.01)

    await asyncio.gather(*(request(limiter) for limiter in limiters for _ in range(8)))
    assert len(starts) == 24
    assert most_in_any_window(starts) == 7
    assert max(starts) - min(starts) >= 3.0  # 24 requests: windows 0-7, 7-14, 14-21, 21-24
    assert all(limiter.local_slots == 0 for limiter in limiters)


async def test_notifications_overtake_waiting_lookups(limiters: list[SharedRateLimiter]) -> None:
    limiter = limiters[0]
    order: list[str] = []

    async def request(kind: str, priority: Priority) -> None:
        async with limiter.slot(priority):
            order.append(kind)

    lookups = [asyncio.create_task(request("lookup", Priority.LOOKUP)) for _ in range(10)]
    await asyncio.sleep(0.05)  # seven lookups went, three wait for the next second
    notifies = [asyncio.create_task(request("notify", Priority.NOTIFY)) for _ in range(2)]
    await asyncio.gather(*lookups, *notifies)
    assert order[:7] == ["lookup"] * 7
    assert order[7:9] == ["notify", "notify"]


# -- a flood (issue 13, point 1, in cluster mode) ---------------------------------------------


async def _hold_the_window(
    limiter: SharedRateLimiter,
) -> tuple[asyncio.Event, list[asyncio.Task[None]]]:
    """Seven requests take the whole shared window and keep it until the event is set."""
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot(Priority.LOOKUP):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(7)]
    await wait_for(lambda: limiter.shared_slots == 7)
    return release, holders


async def test_expired_waiters_leave_without_a_shared_slot(
    limiters: list[SharedRateLimiter],
) -> None:
    limiter = limiters[0]
    release, holders = await _hold_the_window(limiter)
    served: list[str] = []

    async def use(name: str, deadline: float) -> None:
        async with limiter.slot(Priority.NOTIFY, deadline):
            served.append(name)

    soon = time.monotonic() + 1.0
    stale = [asyncio.create_task(use(f"stale-{n}", soon)) for n in range(500)]
    # counted whether a waiter is still queued or already left (a loaded machine may take
    # longer than the deadline to queue 500 of them: the count, not the speed, is the point)
    await wait_for(lambda: limiter.waiting + limiter.expired == 500)
    await wait_for(lambda: limiter.waiting == 0, timeout=5.0)  # each left at its deadline
    assert limiter.expired == 500
    fresh = asyncio.create_task(use("fresh", time.monotonic() + 5))
    release.set()
    results = await asyncio.gather(*stale, return_exceptions=True)
    await asyncio.gather(*holders, fresh)
    assert all(isinstance(r, SlotExpired) for r in results)
    assert served == ["fresh"]  # the stale ones never took a slot
    assert limiter.shared_slots == 8 and limiter.local_slots == 0


async def test_a_shared_backlog_serves_the_newest_first_and_auth_before_all(
    limiters: list[SharedRateLimiter],
) -> None:
    limiter = limiters[0]
    release, holders = await _hold_the_window(limiter)
    served: list[str] = []

    async def use(name: str, priority: Priority = Priority.NOTIFY) -> None:
        async with limiter.slot(priority, time.monotonic() + 60):
            served.append(name)

    names = [f"call-{n}" for n in range(18)]
    waiters = []
    for name in names:
        waiters.append(asyncio.create_task(use(name)))
        await asyncio.sleep(0)  # each queues in turn
    waiters.append(asyncio.create_task(use("token", Priority.AUTH)))
    await wait_for(lambda: limiter.waiting == 19)
    release.set()
    await asyncio.gather(*holders, *waiters)
    # the first 2 s of backlog at 7/s (14 waiters) in order; beyond that, newest first
    newest_first = [f"call-{n}" for n in range(17, 13, -1)]
    assert served == ["token", *newest_first, *names[:14]]


async def _cancel_waiters(limiter: SharedRateLimiter, count: int) -> float:
    """Seconds to cancel ``count`` queued waiters (and see every one leave)."""

    async def wait_in_line() -> None:
        async with limiter.slot(Priority.LOOKUP, time.monotonic() + 45):
            pass

    waiters = [asyncio.create_task(wait_in_line()) for _ in range(count)]
    await wait_for(lambda: limiter.waiting == count, timeout=30)
    started = time.perf_counter()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    took = time.perf_counter() - started
    assert limiter.waiting == 0
    return took


async def test_cancelling_twenty_thousand_shared_waiters_is_linear(
    limiters: list[SharedRateLimiter],
) -> None:
    limiter = limiters[0]
    release, holders = await _hold_the_window(limiter)
    small = await _cancel_waiters(limiter, 5_000)
    large = await _cancel_waiters(limiter, 20_000)
    print(f"\ncancelling shared waiters: 5,000 in {small:.3f} s, 20,000 in {large:.3f} s")
    assert large < 3.0  # quadratic (remove + heapify + wake everyone) took minutes
    release.set()
    await asyncio.gather(*holders)
    async with limiter.slot(Priority.NOTIFY, time.monotonic() + 5):
        pass  # the limiter still serves
