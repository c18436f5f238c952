"""The shared window while daemons lose and regain Redis, each at its own moment, or one of
them only (a partition): every daemon working alone keeps to its share, and the window
leaves that share free (``cluster.presence``), so the account never sees more than ``rate``
requests start in any second. Each daemon reaches Redis through its own relay, which the
test cuts and mends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest
from cluster_helpers import most_in_any_window
from redis_cut import CuttableRelay
from redis_server import RedisServer

from kommo_callerid.cluster.limiter import SharedRateLimiter
from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.core.config import ClusterConfig
from kommo_callerid.kommo.limits import Priority, RateLimiter

from support import wait_for

RATE = 7
SHARE = 3  # floor(7 / 2)


@dataclass
class Node:
    relay: CuttableRelay
    link: ClusterLink
    limiter: SharedRateLimiter
    starts: list[float] = field(default_factory=list)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[Node]]:
    """Two daemons' links and limiters, probing and beating; their probes 0.4 s apart, as
    daemons started at different moments are."""
    async with AsyncExitStack() as stack:
        made: list[Node] = []
        for index in range(2):
            relay = await stack.enter_async_context(CuttableRelay(redis_server.port))
            config = ClusterConfig(redis_url=relay.url, node=f"n{index}", expected_nodes=2)
            link = ClusterLink(config)
            await link.connect()
            stack.push_async_callback(link.close)
            local = RateLimiter(RATE / 2, clock=time.monotonic, sleep=asyncio.sleep)
            limiter = SharedRateLimiter(link, RATE, local, lease=10.0)
            limiter.start()
            stack.push_async_callback(limiter.stop)
            probe = asyncio.create_task(link.watch())
            stack.callback(probe.cancel)
            made.append(Node(relay, link, limiter))
            await asyncio.sleep(0.4)
        yield made


async def _busy(nodes: list[Node], script: Callable[[], Awaitable[None]]) -> list[float]:
    """Every node asks for more than the rate (ten requests at once, 20 ms each) while
    ``script`` runs; the start of every request, all nodes together."""
    stop = asyncio.Event()

    async def one_after_another(node: Node) -> None:
        while not stop.is_set():
            async with node.limiter.slot(Priority.LOOKUP):
                node.starts.append(time.monotonic())
                await asyncio.sleep(0.02)

    workers = [asyncio.create_task(one_after_another(n)) for n in nodes for _ in range(10)]
    try:
        await script()
    finally:
        stop.set()
        await asyncio.gather(*workers)
    return [at for node in nodes for at in node.starts]


async def _mend(node: Node) -> None:
    node.relay.mend()
    await wait_for(lambda: node.link.ok)


def _report(name: str, starts: list[float], nodes: list[Node]) -> None:
    alone = [node.limiter.local_slots for node in nodes]
    print(f"\n{name}: most in one second {most_in_any_window(starts)}, alone {alone}")


async def test_daemons_that_lose_and_regain_redis_at_different_moments(nodes: list[Node]) -> None:
    async def script() -> None:
        await asyncio.sleep(1.5)
        nodes[0].relay.cut()
        await asyncio.sleep(0.6)
        nodes[1].relay.cut()
        await asyncio.sleep(2.5)
        await _mend(nodes[0])
        await asyncio.sleep(1.6)
        await _mend(nodes[1])
        await asyncio.sleep(2.5)

    starts = await _busy(nodes, script)
    _report("lost and regained one after the other", starts, nodes)
    assert all(node.limiter.local_slots > 0 for node in nodes)  # both did work alone
    assert most_in_any_window(starts) <= RATE


async def test_a_daemon_cut_off_alone_keeps_its_share_free(nodes: list[Node]) -> None:
    cut_at: list[float] = []

    async def script() -> None:
        await asyncio.sleep(1.5)
        nodes[1].relay.cut()
        cut_at.append(time.monotonic())
        await asyncio.sleep(5.0)
        await _mend(nodes[1])
        await asyncio.sleep(2.0)

    starts = await _busy(nodes, script)
    _report("one cut off", starts, nodes)
    assert nodes[1].limiter.local_slots > 0 and nodes[0].limiter.local_slots == 0
    assert most_in_any_window(starts) <= RATE
    settled = [at for at in nodes[0].starts if cut_at[0] + 2 < at < cut_at[0] + 5]
    assert most_in_any_window(settled) >= RATE - SHARE  # the rest of the rate is still used


async def test_a_daemon_that_stops_leaves_the_whole_rate_to_the_others(
    nodes: list[Node],
) -> None:
    await nodes[1].limiter.stop()  # a clean stop: it leaves the set at once

    async def script() -> None:
        await asyncio.sleep(3.0)

    starts = await _busy(nodes[:1], script)
    assert most_in_any_window(starts) == RATE
