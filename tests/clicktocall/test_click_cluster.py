"""Two daemons on one real redis-server: a click token spent on daemon A is refused by daemon
B (one Originate in all); while Redis is unreachable each daemon still refuses a token it has
seen itself (its memory), as README "Click-to-call" says; once Redis is back the shared guard
holds again. Real TLS, the fake AMI and the fake Kommo."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from click_setup import ORIGINATOR, click_config, client_tls, post_click, self_signed
from click_tokens import token
from structlog.testing import capture_logs

from cluster.redis_cut import CuttableRelay
from cluster.redis_server import RedisServer
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import events, running_daemon, wait_for


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_token_is_spent_once_across_daemons(redis: RedisServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with AsyncExitStack() as stack:
        relay = await stack.enter_async_context(CuttableRelay(redis.port))
        ami = await stack.enter_async_context(FakeAmiServer(users=ORIGINATOR))
        kommo = await stack.enter_async_context(FakeKommo())
        logs = stack.enter_context(capture_logs())
        urls = []
        for node in ("a", "b"):
            config = click_config(
                ami,
                kommo,
                cert,
                key,
                cluster={"redis_url": relay.url, "node": node, "expected_nodes": 2},
                clicktocall={"min_interval": 0.0},
            )
            daemon = await stack.enter_async_context(running_daemon(config))
            urls.append(f"https://127.0.0.1:{daemon.public_port}")
        await wait_for(lambda: len(events(logs, "clicktocall.account")) == 2, 10.0)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(cert)))
        )
        a, b = urls

        async def click(url: str, once: str) -> int:
            return (await post_click(session, url, once))[0]

        # 1. Redis up: the token is spent on A, B refuses it
        spent = token()
        assert await click(a, spent) == 202
        assert await click(b, spent) == 401
        assert len(ami.originates) == 1

        # 2. Redis unreachable: each daemon still refuses what it has seen itself; a token seen
        # only by A is accepted once by B (the documented fallback: each daemon's memory)
        relay.cut()
        await wait_for(lambda: len(events(logs, "cluster.degraded")) == 2, 10.0)
        assert await click(a, spent) == 401 and await click(b, spent) == 401
        alone = token()
        assert await click(a, alone) == 202
        assert await click(a, alone) == 401
        assert await click(b, alone) == 202
        assert await click(b, alone) == 401
        assert len(ami.originates) == 3

        # 3. Redis back: shared again
        relay.mend()
        await wait_for(lambda: len(events(logs, "cluster.restored")) == 2, 10.0)
        again = token()
        assert await click(b, again) == 202
        assert await click(a, again) == 401
        assert len(ami.originates) == 4
    refusals = [line for line in events(logs, "clicktocall.refused") if line["reason"] == "token"]
    assert len(refusals) == 6 and {line["detail"] for line in refusals} == {"jti already used"}
