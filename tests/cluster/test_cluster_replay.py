"""Click-to-call tokens spent once across daemons: the ``jti`` guard on a real redis-server
(``SET NX`` with an expiry), and what it answers while Redis is unreachable (None: each daemon
then relies on its own memory; the end-to-end case is tests/clicktocall/test_click_cluster.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis_cut import CuttableRelay
from redis_server import RedisServer

from kommo_callerid.clicktocall.tokens import LEEWAY
from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.replay import MIN_TTL_MS, SharedReplayGuard
from kommo_callerid.core.config import ClusterConfig


@pytest.fixture
async def two_links(redis_server: RedisServer) -> AsyncIterator[list[ClusterLink]]:
    links = [ClusterLink(ClusterConfig(redis_url=redis_server.url, node=n)) for n in "ab"]
    for link in links:
        await link.connect()
    yield links
    for link in links:
        await link.close()


async def test_a_token_spent_on_one_daemon_is_refused_by_the_other(
    two_links: list[ClusterLink], redis_server: RedisServer
) -> None:
    a, b = (SharedReplayGuard(link, keep_after=LEEWAY) for link in two_links)
    jti = str(uuid.uuid4())
    expires_at = time.time() + 1800
    assert await a.first_use(jti, expires_at) is True
    assert await b.first_use(jti, expires_at) is False
    assert await a.first_use(jti, expires_at) is False
    assert await b.first_use(str(uuid.uuid4()), expires_at) is True
    redis = redis_server.client()
    try:
        keys = [key.decode() for key in await redis.keys("kommo-callerid:jti:*")]
        assert len(keys) == 2 and not any(jti in key for key in keys)  # a hash, not the id
        ttls = [await redis.pttl(key) for key in keys]
        # kept until the token expired plus the leeway, not longer
        assert all((1800 + LEEWAY - 60) * 1000 < ttl <= (1800 + LEEWAY) * 1000 for ttl in ttls)
        assert {await redis.get(key) for key in keys} == {b"a", b"b"}  # who spent it
    finally:
        await redis.aclose()


async def test_an_expired_token_is_still_remembered_a_minute(
    two_links: list[ClusterLink], redis_server: RedisServer
) -> None:
    a, b = (SharedReplayGuard(link, keep_after=LEEWAY) for link in two_links)
    jti = str(uuid.uuid4())
    assert await a.first_use(jti, time.time() - 3600) is True
    assert await b.first_use(jti, time.time() - 3600) is False
    redis = redis_server.client()
    try:
        [key] = await redis.keys("kommo-callerid:jti:*")
        assert MIN_TTL_MS - 5_000 < await redis.pttl(key) <= MIN_TTL_MS
    finally:
        await redis.aclose()


async def test_unreachable_redis_answers_none_not_yes(redis_server: RedisServer) -> None:
    async with CuttableRelay(redis_server.port) as relay:
        link = ClusterLink(ClusterConfig(redis_url=relay.url, node="a"))
        await link.connect()
        guard = SharedReplayGuard(link, keep_after=LEEWAY)
        try:
            relay.cut()
            # None, never True: the caller then decides with its own memory of jtis
            assert await guard.first_use(str(uuid.uuid4()), time.time() + 1800) is None
            assert not link.ok  # no probe loop here: the failed call degraded the link
            assert await guard.first_use(str(uuid.uuid4()), time.time() + 1800) is None
        finally:
            await link.close()
