"""Call claims on a real Redis: a thousand held or watched claims cost one call a tick, the
owner dying or giving a call up hands it to a watcher, and a failed tick is not a lost
Redis."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis_server import Monitor, RedisServer
from structlog.testing import capture_logs

from kommo_callerid.cluster.claim_scripts import TICK
from kommo_callerid.cluster.claims import Claim, Claims
from kommo_callerid.cluster.link import GUARD, ClusterLink
from kommo_callerid.core.config import ClusterConfig

from support import events, wait_for

# The daemon's claim life (a tick every second). Shorter lives (0.6 s, then 1.5 s) let a
# saturated machine (two test runs and two busy loops on 2 cores) delay a renewal past the
# claim's life: a test artefact, not a product fault.
TTL = 3.0
CALLS = 1_000


@pytest.fixture
async def two(redis_server: RedisServer) -> AsyncIterator[list[Claims]]:
    links = [ClusterLink(ClusterConfig(redis_url=redis_server.url, node=n)) for n in "ab"]
    for link in links:
        await link.connect()  # the cluster's epoch (the claims' scripts check it)
    claims = [Claims(link, ttl=TTL) for link in links]
    for each in claims:
        each.start()
    yield claims
    for each, link in zip(claims, links, strict=True):
        await each.stop()
        await link.close()


async def test_a_thousand_claims_are_renewed_and_watched_in_one_call_a_tick(
    two: list[Claims], redis_server: RedisServer
) -> None:
    a, b = two
    held = await asyncio.gather(*(a.claim(f"c{n}", "notify") for n in range(CALLS)))
    assert all(claim is not None for claim in held)
    watchers = [
        asyncio.create_task(b.wait_claim(f"c{n}", "notify", until=lambda: False))
        for n in range(CALLS)
    ]
    await wait_for(lambda: b.watching == CALLS, timeout=30)  # 1,000 first tries, 16 at once
    async with Monitor(redis_server) as monitor:
        await asyncio.sleep(3 * TTL)  # 3 lifetimes of a claim without renewal
    assert a.holding == CALLS and all(claim is not None and claim.held for claim in held)
    assert not any(task.done() for task in watchers)
    tick = hashlib.sha1((GUARD + TICK).encode()).hexdigest()[:8]
    ticks = monitor.by_name[f"evalsha:{tick}"]
    assert ticks <= 2 * (3 * TTL / (TTL / 3) + 1)  # one per tick and Claims, whatever the calls
    assert monitor.total <= ticks + 2, monitor.by_name  # nothing per call
    # finished: every watcher gives up at its next tick, without a claim
    await asyncio.gather(*(claim.finish() for claim in held if claim is not None))
    assert await asyncio.wait_for(asyncio.gather(*watchers), 5 * TTL) == [None] * CALLS
    assert b.watching == 0 and a.holding == 0


async def test_a_watcher_takes_over_a_released_or_lapsed_claim(two: list[Claims]) -> None:
    a, b = two
    given_up = await a.claim("released", "notify")
    lapsing = await a.claim("lapsing", "notify")
    assert given_up is not None and lapsing is not None
    await given_up.record((7,))
    first = asyncio.create_task(b.wait_claim("released", "notify", until=lambda: False))
    second = asyncio.create_task(b.wait_claim("lapsing", "notify", until=lambda: False))
    await wait_for(lambda: b.watching == 2)
    await given_up.release()
    taken = await asyncio.wait_for(first, 2 * TTL)
    assert isinstance(taken, Claim) and taken.shared
    assert await taken.recorded() == (frozenset({7}), False)  # read with the claim
    await a.stop()  # the owner "dies": its claims are no longer renewed
    assert isinstance(await asyncio.wait_for(second, 3 * TTL), Claim)
    assert await a.claim("lapsing", "notify") is None  # b holds it now


async def test_a_finished_call_is_not_claimed_or_watched(two: list[Claims]) -> None:
    a, b = two
    claim = await a.claim("done", "journal")
    assert claim is not None
    await claim.finish()
    assert await b.wait_claim("done", "journal", until=lambda: False) is None
    assert b.watching == 0


async def test_a_failed_tick_does_not_degrade_the_link(redis_server: RedisServer) -> None:
    link = ClusterLink(ClusterConfig(redis_url=redis_server.url, node="a"))
    await link.connect()
    claims = Claims(link)  # the daemon's ttl: a tick a second, again 0.5 s after a failure
    client = redis_server.client()
    try:
        claim = await claims.claim("call", "notify")
        assert claim is not None
        claims.start()
        with capture_logs() as logs:
            # Redis holds back every write (a tick's script too) past the socket timeout
            await client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            await wait_for(lambda: claims.failed_ticks >= 1, timeout=3)
            await wait_for(lambda: claims.ticks > claims.failed_ticks + 1, timeout=5)
        assert events(logs, "cluster.claims_tick_failed")
        assert link.ok and not events(logs, "cluster.degraded")
        assert claim.held  # renewed again before its ttl ran out
    finally:
        await claims.stop()
        await client.aclose()
        await link.close()
