"""``/healthz`` says whether notifications can go out: a ``kommo`` field and a 503 when they
cannot (refused token, unreadable token file, blocked account, expired backlog)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import KommoConfig
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo, FakeOAuth, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, running_daemon, wait_for

JOHN = "18305803077"
LOCAL = {"listen": "127.0.0.1:0"}


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def health(client: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with client.get(f"http://127.0.0.1:{daemon.http_port}/healthz") as answer:
        return answer.status, await answer.json()


async def kommo_state_becomes(client: aiohttp.ClientSession, daemon: Daemon, state: str) -> int:
    async def current() -> str:
        return str((await health(client, daemon))[1]["kommo"])

    for _ in range(250):
        if await current() == state:
            return (await health(client, daemon))[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"kommo never became {state!r}")


async def test_ok_while_kommo_takes_notifications(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        await ami.play(CallScenarios().inbound(JOHN, agents=()).events)
        await wait_for(lambda: len(kommo.events) == 1)
        status, body = await health(client, daemon)
    assert (status, body["ami"], body["kommo"]) == (200, "connected", "ok")


async def test_a_refused_token_is_unauthorised_and_503(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        kommo.expire_token()  # the long-lived token was revoked
        await ami.play(CallScenarios().inbound(JOHN, agents=()).events)
        assert await kommo_state_becomes(client, daemon, "unauthorised") == 503


async def test_a_blocked_account_is_blocked_and_503(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        kommo.outage(403, 30, body='{"title": "Forbidden"}', content_type="application/json")
        await ami.play(CallScenarios().inbound(JOHN, agents=()).events)
        assert await kommo_state_becomes(client, daemon, "blocked") == 503


async def test_expired_notifications_are_a_backlog_until_one_goes_out(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    config = make_config(ami, kommo, http=LOCAL, calls={"notify_ttl": 0.3})
    scenarios = CallScenarios()
    async with running_daemon(config) as daemon:
        kommo.set_delay(EVENTS_PATH, 1.0)
        await ami.play(scenarios.inbound(JOHN, agents=()).events)
        assert await kommo_state_becomes(client, daemon, "backlog") == 503
        kommo.set_delay(EVENTS_PATH, 0)
        await ami.play(scenarios.inbound("14155550199", agents=()).events)
        assert await kommo_state_becomes(client, daemon, "ok") == 200


async def test_an_unreadable_token_file_is_token_unreadable_and_logged_with_the_fix(
    ami: FakeAmiServer, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with FakeKommo(demo_dataset(), oauth=FakeOAuth()) as fake:
        assert fake.oauth is not None
        token_file = tmp_path / "tokens.json"
        oauth = KommoConfig(
            base_url=fake.base_url,
            client_id=fake.oauth.client_id,
            client_secret=SecretStr(fake.oauth.client_secret),
            redirect_uri=fake.oauth.redirect_uri,
            refresh_token=SecretStr(fake.oauth.refresh_token),
            token_file=token_file,
        )
        config = make_config(ami, fake, http=LOCAL).model_copy(update={"kommo": oauth})
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                os.replace(token_file, tmp_path / "aside")
                token_file.mkdir()  # what the service meets: a file it cannot read
                fake.expire_token()  # so the next request needs a refresh
                await ami.play(CallScenarios().inbound(JOHN, agents=()).events)
                assert await kommo_state_becomes(client, daemon, "token_unreadable") == 503
    fixes = [e for e in events(logs, "kommo.error") if "systemctl restart" in str(e["detail"])]
    assert fixes and fixes[0]["log_level"] == "error"
