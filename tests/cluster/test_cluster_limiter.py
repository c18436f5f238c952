"""The shared sliding window on a real Redis: its bound across daemons, and priority."""

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
from kommo_callerid.kommo.limits import Priority, RateLimiter


@pytest.fixture
async def limiters(redis_server: RedisServer) -> AsyncIterator[list[SharedRateLimiter]]:
    links = [ClusterLink(ClusterConfig(redis_url=redis_server.url, node=f"n{i}")) for i in range(3)]
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
