"""OAuth with three daemons on one Redis: one refresh per expiry, never a spent token."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path

from pydantic import SecretStr
from redis_server import RedisServer

from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.store import SharedTokens
from kommo_callerid.commands.oneshot import authorize_once
from kommo_callerid.core.config import CacheConfig, ClusterConfig, KommoConfig
from kommo_callerid.kommo.auth import REFRESH_MARGIN
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.tokens import TokenFile, TokenPair
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, FakeOAuth

from support import make_config

EXPIRES_IN = 86_400


class Wall:
    """The daemons' shared wall clock, moved by the test to make tokens expire."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_three_daemons_one_refresh_per_expiry(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    wall = Wall()
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeKommo(oauth=FakeOAuth(expires_in=EXPIRES_IN)))
        assert fake.oauth is not None
        # What a single daemon left behind: its token file, which the cluster adopts.
        single = TokenFile(tmp_path / "single" / "tokens.json")
        single.save(
            TokenPair(
                SecretStr(fake.token), SecretStr(fake.oauth.refresh_token), wall() + EXPIRES_IN
            )
        )
        clients = []
        for index in range(3):
            link = ClusterLink(ClusterConfig(redis_url=redis_server.url, node=f"n{index}"))
            stack.push_async_callback(link.close)
            config = KommoConfig(
                base_url=fake.base_url,
                client_id=fake.oauth.client_id,
                client_secret=SecretStr(fake.oauth.client_secret),
                redirect_uri=fake.oauth.redirect_uri,
                token_file=single.path if index == 0 else tmp_path / f"n{index}" / "t.json",
                rate_limit=100,
            )
            kommo = KommoClient(
                config,
                CacheConfig(ttl=0, negative_ttl=0),
                wall_clock=wall,
                shared_tokens=SharedTokens(link),
            )
            await stack.enter_async_context(kommo)
            clients.append(kommo)
        await clients[0].lookup("+15550000000")  # the file's pair moves into Redis
        assert fake.oauth.refreshes == 0
        expiries = 4
        for expiry in range(expiries):
            wall.now += EXPIRES_IN - REFRESH_MARGIN + 1  # every pair is due now
            await asyncio.gather(
                *(kommo.lookup(f"+1555{expiry}{n:06d}") for kommo in clients for n in range(5))
            )
    assert fake.oauth.refreshes == expiries
    # the fake refuses a replaced access token at once (401): none was ever presented
    assert not [r for r in fake.requests if r.status == 401]
    assert fake.requests_to("/oauth2/access_token") == expiries


async def test_authorize_puts_the_new_pair_in_redis(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeKommo(oauth=FakeOAuth(codes={"the-code"})) as fake:
        assert fake.oauth is not None
        oauth = {
            "access_token": "",
            "client_id": fake.oauth.client_id,
            "client_secret": fake.oauth.client_secret,
            "redirect_uri": fake.oauth.redirect_uri,
            "token_file": str(tmp_path / "tokens.json"),
        }
        config = make_config(
            ami, fake, kommo=oauth, cluster={"redis_url": redis_server.url, "node": "ops"}
        )
        await authorize_once(config, "the-code")
        client = redis_server.client()
        try:
            stored = json.loads(await client.get("kommo-callerid:oauth:pair"))
        finally:
            await client.aclose()
    assert stored["access_token"] == fake.token
    assert stored["refresh_token"] == fake.oauth.refresh_token
