"""OAuth with three daemons on one Redis: one refresh per expiry, never a spent token."""

from __future__ import annotations

import asyncio
import json
import math
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis_server import RedisServer

from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.store import SharedTokens
from kommo_callerid.commands.oneshot import authorize_once
from kommo_callerid.core.config import CacheConfig, ClusterConfig, KommoConfig
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.tokens import REFRESH_MARGIN, TokenFile, TokenPair
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


async def _cluster_clients(
    stack: AsyncExitStack, fake: FakeKommo, redis_url: str, tmp_path: Path, wall: Wall
) -> list[KommoClient]:
    """Three daemons' Kommo clients on one Redis, starting from the config's refresh token."""
    assert fake.oauth is not None
    clients = []
    for index in range(3):
        link = ClusterLink(ClusterConfig(redis_url=redis_url, node=f"n{index}"))
        stack.push_async_callback(link.close)
        config = KommoConfig(
            base_url=fake.base_url,
            client_id=fake.oauth.client_id,
            client_secret=SecretStr(fake.oauth.client_secret),
            redirect_uri=fake.oauth.redirect_uri,
            refresh_token=SecretStr(fake.oauth.refresh_token),
            token_file=tmp_path / f"n{index}" / "tokens.json",
            rate_limit=1000,
        )
        kommo = KommoClient(
            config,
            CacheConfig(ttl=0, negative_ttl=0),
            wall_clock=wall,
            shared_tokens=SharedTokens(link),
        )
        await stack.enter_async_context(kommo)
        clients.append(kommo)
    return clients


async def _everyone_looks_up(clients: list[KommoClient], tag: str) -> None:
    await asyncio.gather(
        *(
            kommo.lookup(f"+1555{tag}{index}{n:03d}")
            for index, kommo in enumerate(clients)
            for n in range(3)
        )
    )


@pytest.mark.parametrize(("lifetime", "step", "steps"), [(60, 5.0, 24), (8, 0.5, 24)])
async def test_short_lived_tokens_one_refresh_per_expiry(
    redis_server: RedisServer, tmp_path: Path, lifetime: int, step: float, steps: int
) -> None:
    # Issue 18, point 14: with a fixed 300 s margin a 60 s (or 8 s) token was always "due",
    # so every request refreshed (3 daemons: 7 refreshes at start, 13 in 12 s with 8 s tokens).
    wall = Wall()
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeKommo(oauth=FakeOAuth(expires_in=lifetime)))
        assert fake.oauth is not None
        clients = await _cluster_clients(stack, fake, redis_server.url, tmp_path, wall)
        await asyncio.gather(*(kommo.ensure_credentials() for kommo in clients))
        await _everyone_looks_up(clients, "00")
        at_start = fake.oauth.refreshes
        for tick in range(1, steps + 1):  # the daemons at work, `step` seconds apart
            wall.now += step
            await _everyone_looks_up(clients, f"{tick:02d}")
        during = fake.oauth.refreshes - at_start
    assert at_start == 1  # the config's refresh token traded once, for all three
    # each pair lives `lifetime`: at most one refresh per lifetime gone by, for the cluster
    assert 1 <= during <= math.ceil(steps * step / lifetime)
    assert not [r for r in fake.requests if r.status == 401]


async def test_forced_401_one_refresh_for_the_cluster(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    wall = Wall()
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeKommo(oauth=FakeOAuth(expires_in=60)))
        assert fake.oauth is not None
        clients = await _cluster_clients(stack, fake, redis_server.url, tmp_path, wall)
        await _everyone_looks_up(clients, "00")
        before = fake.oauth.refreshes
        fake.expire_token()  # Kommo revokes the access token: every daemon gets a 401
        await _everyone_looks_up(clients, "01")
        assert fake.oauth.refreshes == before + 1
        await _everyone_looks_up(clients, "02")  # and the new pair serves them all
        assert fake.oauth.refreshes == before + 1
