"""The notification's warm connection (issue 22), over real sockets: notifications go out on
it once it is open; a server that closes it, an answer it cannot read, a proxy, all fall back
to the ordinary (aiohttp) path; a 429 with an HTML body and a 401 keep their meaning.

A first attempt is written in its caller's turn when nothing stands in its way
(``KommoTransport.send_now``): it is on the wire before the caller awaits anything; a request
waiting for the rate limit keeps its place; a caller cancelled before the answer gives its
slot back; OAuth writes at once only with a token at hand, and a refreshed token is the one
the next request carries; a write that finds no warm connection spends no slot."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from http_script import OK_204, ScriptedServer
from oauth_support import client as oauth_client
from oauth_support import oauth_config
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.fastparse import UnreadableAnswer, parse_response
from kommo_callerid.kommo.fastpost import FastPost
from kommo_callerid.kommo.limits import Priority
from kommo_callerid.kommo.transport import MAX_BODY_BYTES
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


def _fast(client: KommoClient) -> FastPost:
    fast = client.transport.fast
    assert fast is not None
    return fast


async def _warm(client: KommoClient) -> FastPost:
    """The first notification goes the ordinary way and opens the warm connection."""
    assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    fast = _fast(client)
    await wait_for(lambda: fast.ready)
    return fast


async def test_notifications_go_out_on_the_warm_connection(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        assert fast.sent == 0
        for _ in range(20):
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 20
    assert len(kommo.events) == 21
    assert all(record.status == 200 for record in kommo.requests)


async def test_the_warm_connection_holds_the_rate_limit(kommo: FakeKommo) -> None:
    kommo.rate_limit = 3
    async with _client(kommo.base_url, kommo.token, rate_limit=3) as client:
        await _warm(client)
        outcomes = [await client.notify(JOHN, [1], within=5) for _ in range(7)]
        assert _fast(client).sent >= 5  # the limiter's waits did not push them off it
    assert outcomes == [NotifyOutcome.SENT] * 7
    assert kommo.violations == 0


async def test_a_429_with_an_html_body_pauses_then_the_retry_succeeds(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        html = "<html><body><h1>429 Too Many Requests</h1></body></html>"
        kommo.fail_next(EVENTS_PATH, 429, html, content_type="text/html")
        with capture_logs() as logs:
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 1  # the 429 came back on the warm connection
    statuses = [record.status for record in kommo.requests if record.path == EVENTS_PATH]
    assert statuses == [200, 429, 200]
    [error] = [line for line in logs if line["event"] == "kommo.error"]
    assert error["status"] == 429
    [sent] = [line for line in logs if line["event"] == "kommo.notified"]
    assert sent["attempt"] == 2


async def test_a_401_on_the_warm_connection_refreshes_and_the_retry_goes_out(
    tmp_path: Path,
) -> None:
    async with FakeKommo(oauth=FakeOAuth()) as fake:
        config = oauth_config(fake, tmp_path / "tokens.json")
        async with oauth_client(config) as client:
            fast = await _warm(client)
            before = fast.sent
            fake.expire_token()
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
            assert fast.sent == before + 1  # the 401; the retry after the refresh: ordinary
        assert fake.oauth is not None and fake.oauth.refreshes == 2
        statuses = [record.status for record in fake.requests if record.path == EVENTS_PATH]
        assert statuses == [200, 401, 200]


async def test_a_proxy_means_no_fast_path(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token, proxy="http://127.0.0.1:9") as client:
        assert client.transport.fast is None


async def test_a_connection_closed_without_an_answer_falls_back() -> None:
    # the first request (ordinary path) gets 204; the second, on the warm connection, finds
    # it closed by the server without an answer: it goes again the ordinary way
    script = ((OK_204, False), (None, True))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 0
        assert len(server.requests) == 3
        # the pool opens a new connection, and the next notification takes it
        await wait_for(lambda: fast.ready)
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 1


async def test_a_connection_the_server_closes_while_idle_is_replaced() -> None:
    async with ScriptedServer() as server, _client(server.base_url, "secret-token") as client:
        fast = await _warm(client)
        before = server.connections
        for writer in server._writers[before - 1 :]:
            writer.close()  # the server's keep-alive timeout
        await wait_for(lambda: server.connections > before and fast.ready)
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 1


CHUNKED_HTML_429 = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\nRetry-After: 0\r\n\r\n"
    b"6\r\n<html>\r\n7\r\n</html>\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("reply", "close", "fast_sent"),
    [
        (CHUNKED_HTML_429, False, 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", True, 1),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", True, 1),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nOops", False, 1),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, 1),
        (b"NOT HTTP AT ALL\r\n\r\n", True, 0),
    ],
    ids=["chunked-html-429", "connection-close", "read-to-close", "500", "1xx", "garbage"],
)
async def test_odd_answers_on_the_warm_connection(
    reply: bytes, close: bool, fast_sent: int
) -> None:
    script = ((OK_204, False), (reply, close))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == fast_sent
        await wait_for(lambda: fast.ready)  # and a usable connection is back


def test_the_parser_caps_the_body_and_rejects_conflicting_framing() -> None:
    huge = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    parsed = parse_response(bytearray(huge), False, MAX_BODY_BYTES)
    assert parsed is not None and parsed.answer.body is None and not parsed.reusable
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8\r\nxxxxxxxx\r\n"
    parsed = parse_response(bytearray(chunked), False, 4)
    assert parsed is not None and parsed.answer.body is None
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"
    assert parse_response(bytearray(partial), False, MAX_BODY_BYTES) is None
    conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    with pytest.raises(UnreadableAnswer):
        parse_response(bytearray(conflicting), False, MAX_BODY_BYTES)


def test_the_warm_connection_works_on_uvloop() -> None:
    # the daemon runs on uvloop when installed: its transports are not asyncio.Transport
    uvloop = pytest.importorskip("uvloop")

    async def notify_five() -> tuple[int, int]:
        async with FakeKommo(demo_dataset()) as kommo:
            client = _client(kommo.base_url, kommo.token)
            async with client:
                fast = await _warm(client)
                for _ in range(5):
                    assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
                return fast.sent, len(kommo.events)

    assert uvloop.run(notify_five()) == (5, 6)


async def test_a_pool_closed_while_a_request_is_out_keeps_no_connection(
    kommo: FakeKommo,
) -> None:
    """The answer comes after the client closed: its connection is closed, not kept idle (it
    was left open: an unclosed transport at garbage collection)."""
    client = _client(kommo.base_url, kommo.token)
    fast = await _warm(client)
    kommo.set_delay(EVENTS_PATH, 0.2)
    notifying = asyncio.create_task(client.notify(JOHN, [1], within=5))
    await wait_for(lambda: kommo.requests_to(EVENTS_PATH) >= 1 and fast.sent == 0, 2)
    await asyncio.sleep(0.05)  # the request is out, its answer delayed
    await fast.close()
    await notifying
    assert not fast.ready and len(fast._idle) == 0
    await client.close()


async def test_a_pool_closed_while_it_opens_a_connection_leaks_no_socket(
    kommo: FakeKommo,
) -> None:
    """close() lands at every point of the opener's connect and leaves no socket open. A guard,
    not a proof: the code before ``open_now`` passed it too (CI's unclosed transport in the
    check tests was not reproduced here)."""
    for turns in range(60):
        fast = FastPost(kommo.base_url, "test", max_body=MAX_BODY_BYTES, size=4)
        fast.want()
        for _ in range(turns % 6):
            await asyncio.sleep(0)
        await fast.close()
        assert not fast.open_now
    gc.collect()  # an unclosed transport warns here (an error under filterwarnings)


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
