"""A notification written in the caller's turn (issue 22, ``KommoTransport.send_now``), over
real sockets: when nothing stands in its way it is on the wire before the caller awaits
anything; when something does (a request waiting for the rate limit, a token not at hand) it
goes the ordinary way; a caller cancelled while it waits for the answer gives its rate-limit
slot back; a refreshed token is the one the next request carries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from http_script import OK_204, ScriptedServer
from oauth_support import client as oauth_client
from oauth_support import oauth_config
from pydantic import SecretStr

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.fastpost import FastPost
from kommo_callerid.kommo.limits import Priority
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo, FakeOAuth, demo_dataset

from support import wait_for

JOHN = "18305803077"
EVENT = {"add": [{"type": "phone_call", "phone_number": JOHN, "users": [1]}]}


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


def _client(base_url: str, token: str, **settings: object) -> KommoClient:
    config = KommoConfig(base_url=base_url, access_token=SecretStr(token), **settings)
    return KommoClient(config, CacheConfig())


async def _warm(client: KommoClient) -> FastPost:
    """The first notification goes the ordinary way and opens the warm connections."""
    assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    fast = client.transport.fast
    assert fast is not None
    await wait_for(lambda: fast.ready)
    return fast


async def test_the_request_is_on_the_wire_before_the_caller_awaits(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        deadline = time.monotonic() + 5
        sending = client.transport.send_now(EVENTS_PATH, EVENT, Priority.NOTIFY, deadline)
        assert sending is not None
        await wait_for(lambda: len(kommo.events) == 2)  # received; nobody awaited `sending`
        response = await sending
        assert response.status == 200
        assert fast.sent == 1


async def test_a_request_waiting_for_the_rate_limit_keeps_its_place(kommo: FakeKommo) -> None:
    kommo.rate_limit = 1
    async with _client(kommo.base_url, kommo.token, rate_limit=1) as client:
        await _warm(client)  # took this second's only slot
        deadline = time.monotonic() + 5
        assert client.transport.send_now(EVENTS_PATH, EVENT, Priority.NOTIFY, deadline) is None
        # the ordinary way waits for the next second, and others queue behind it, not ahead
        waiting = asyncio.create_task(client.notify(JOHN, [2], within=5))
        await wait_for(lambda: client.transport.table_sizes()["limiter_waiting"] == 1)
        assert client.transport.send_now(EVENTS_PATH, EVENT, Priority.NOTIFY, deadline) is None
        assert await waiting is NotifyOutcome.SENT
    assert kommo.violations == 0


async def test_a_caller_cancelled_before_the_answer_gives_its_slot_back() -> None:
    script = ((OK_204, False), (b"", False))  # the second request is never answered
    async with ScriptedServer(*script) as server:
        async with _client(server.base_url, "token", rate_limit=1) as client:
            await _warm(client)
            waiting = asyncio.create_task(client.notify(JOHN, [1], within=5))
            await wait_for(lambda: len(server.requests) == 2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # at one request a second, a slot kept by the cancelled one would block this
            assert await client.notify(JOHN, [1], within=3) is NotifyOutcome.SENT
        assert len(server.requests) == 3


async def test_oauth_sends_at_once_only_with_a_token_at_hand(tmp_path: Path) -> None:
    async with FakeKommo(oauth=FakeOAuth()) as fake:
        config = oauth_config(fake, tmp_path / "tokens.json")
        async with oauth_client(config) as client:
            auth = client.transport.auth
            assert auth.authorization_now() is None  # the token file is not read yet
            fast = await _warm(client)
            assert auth.authorization_now() == await auth.authorization()
            fake.expire_token()
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT  # refreshed
            sent = fast.sent
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
            assert fast.sent == sent + 1  # written at once, with the new token
        statuses = [record.status for record in fake.requests if record.path == EVENTS_PATH]
        assert statuses == [200, 401, 200, 200]


async def test_a_request_that_finds_no_warm_connection_spends_no_slot(kommo: FakeKommo) -> None:
    # No warm connection is open before the first request: it goes the ordinary way, in the
    # slot it was about to write in. At one request a second, a slot spent on nothing
    # would hold it past its half second.
    async with _client(kommo.base_url, kommo.token, rate_limit=1) as client:
        assert client.transport.fast is not None and not client.transport.fast.ready
        assert await client.notify(JOHN, [1], within=0.5) is NotifyOutcome.SENT
