"""The lookup cache shared through Redis: one Kommo lookup per number for all daemons."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from pydantic import SecretStr
from redis_server import RedisServer

from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.store import SharedCache
from kommo_callerid.core.config import CacheConfig, ClusterConfig, KommoConfig
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo, demo_dataset

JOHN = "18305803077"  # responsible user 8375357 in the demo dataset


async def test_three_daemons_look_a_number_up_once(redis_server: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeKommo(demo_dataset()))
        fake.set_delay(BY_PHONE_PATH, 0.2)  # all three ask while the first is under way
        clients = []
        for index in range(3):
            link = ClusterLink(ClusterConfig(redis_url=redis_server.url, node=f"n{index}"))
            stack.push_async_callback(link.close)
            config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(fake.token))
            kommo = KommoClient(config, CacheConfig(), shared_cache=SharedCache(link))
            clients.append(await stack.enter_async_context(kommo))
        results = await asyncio.gather(*(kommo.lookup(JOHN) for kommo in clients))
        again = await clients[2].lookup(JOHN)
    assert fake.requests_to(BY_PHONE_PATH) == 1
    assert {result.responsible_user_id for result in results} == {8375357}
    assert sorted(result.cached for result in results) == [False, True, True]
    assert again.cached
