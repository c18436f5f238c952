"""Lookups' GETs and the journal's JSON POSTs on the warm connections (issue 22), over real
sockets: their first attempt goes out there once a connection is open, with the query string
and the body intact; a body over the cap, a server that closes without answering, a 429 with
Retry-After keep the meaning they have on the ordinary (aiohttp) path; a lookup and a
notification in flight at once both find a warm connection; the phone book's sync does not
take one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from http_script import OK_204, ScriptedServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig, LookupMode
from kommo_callerid.core.models import (
    CallDirection,
    CallStatus,
    EntityType,
    JournalCall,
    JournalVerdict,
    KommoError,
    NotifyOutcome,
)
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.fastpost import FastPathUnavailable, FastPost
from kommo_callerid.kommo.journal_api import KommoJournal
from kommo_callerid.kommo.limits import Priority
from kommo_callerid.kommo.transport import FAST_CONNECTIONS, MAX_BODY_BYTES
from kommo_callerid.sim.kommo_app import (
    BY_PHONE_PATH,
    CONTACTS_PATH,
    FakeKommo,
    demo_dataset,
)
from kommo_callerid.sim.kommo_journal import CALLS_PATH

from support import wait_for

JOHN = "18305803077"
UNKNOWN = "15550001111"


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


def _client(base_url: str, token: str, **settings: object) -> KommoClient:
    config = KommoConfig(base_url=base_url, access_token=SecretStr(token), **settings)
    return KommoClient(config, CacheConfig())


def _journal(client: KommoClient) -> KommoJournal:
    return KommoJournal(client.transport, timeout=5, rate_limit=7)


def _call(uniq: str, phone: str = JOHN) -> JournalCall:
    return JournalCall(
        uniq, CallDirection.INBOUND, phone, 5, CallStatus.ANSWERED, "", None, 1_780_000_000, "",
        "kommo-callerid",
    )  # fmt: skip


async def _warm(client: KommoClient) -> FastPost:
    """The first request goes the ordinary way and opens the warm connections."""
    assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    fast = client.transport.fast
    assert fast is not None
    await wait_for(lambda: fast.ready)
    return fast


async def test_lookups_go_out_on_the_warm_connection(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        found = await client.lookup(JOHN)
        unknown = await client.lookup(UNKNOWN)
        assert fast.sent == 2
        counted = {key: n for key, n in client.stats.requests.items() if key[0] == BY_PHONE_PATH}
        assert sum(counted.values()) == 2 and (BY_PHONE_PATH, None) not in counted
    assert found.entity is not None and found.entity.id == 1001  # the query string arrived
    assert unknown.entity is None
    async with _client(kommo.base_url, kommo.token, lookup=LookupMode.CONTACTS) as client:
        fast = await _warm(client)
        contact = (await client.lookup(JOHN)).entity
        assert contact is not None and (contact.type, contact.id) == (EntityType.CONTACT, 1001)
        assert fast.sent == 1
    assert all(200 <= record.status < 300 for record in kommo.requests)


async def test_journal_posts_go_out_on_the_warm_connection(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        answers = await _journal(client).add_calls([_call("1.1"), _call("1.2", UNKNOWN)])
        assert fast.sent == 1
        assert client.stats.requests[CALLS_PATH, 200] == 1
    assert [answer.verdict for answer in answers] == [
        JournalVerdict.ATTACHED,
        JournalVerdict.UNKNOWN,
    ]
    assert kommo.journal.uniqs() == ["1.1"] and kommo.journal.batches == [2]


async def test_a_lookup_and_a_notification_in_flight_at_once_both_go_warm(
    kommo: FakeKommo,
) -> None:
    kommo.set_delay(BY_PHONE_PATH, 0.3)
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        await wait_for(lambda: len(fast._idle) == FAST_CONNECTIONS)
        lookup = asyncio.create_task(client.lookup(JOHN))
        await wait_for(lambda: len(fast._idle) == FAST_CONNECTIONS - 1)  # the lookup took one
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 1 and not lookup.done()
        found = await lookup
        assert found.entity is not None and found.entity.id == 1001
        assert fast.sent == 2


async def test_the_journal_leaves_a_connection_to_notifications(kommo: FakeKommo) -> None:
    authorization = f"Bearer {kommo.token}"
    fast = FastPost(kommo.base_url, "test", max_body=MAX_BODY_BYTES, size=1)
    try:
        fast.want()
        await wait_for(lambda: fast.ready)
        with pytest.raises(FastPathUnavailable):  # the only idle one stays for a notification
            await fast.answer(fast.write("POST", CALLS_PATH, authorization, b"[]", 5, spare=1))
        for target in (f"{CONTACTS_PATH}?query=a b", f"{CONTACTS_PATH}\r\nX-Evil: 1"):
            with pytest.raises(FastPathUnavailable):  # never splits the request line
                await fast.answer(fast.write("GET", target, authorization, None, 5))
        assert kommo.requests == []  # none of them went out
        target = f"{CONTACTS_PATH}?query={JOHN}"
        answer = await fast.answer(fast.write("GET", target, authorization, None, 5))
        assert answer.status == 200 and answer.body is not None and b"John Doe" in answer.body
        assert fast.sent == 1
    finally:
        await fast.close()


async def test_the_phone_book_sync_keeps_to_the_ordinary_path(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token) as client:
        fast = await _warm(client)
        response = await client.transport.request(
            "GET",
            CONTACTS_PATH,
            params={"limit": "250", "page": "1"},
            priority=Priority.SYNC,
            deadline=time.monotonic() + 5,
        )
        assert response.status == 200 and fast.sent == 0


def _json_answer(status: str, body: object, *extra: str) -> bytes:
    raw = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *extra]
    head.append(f"Content-Length: {len(raw)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


async def test_a_lookup_answer_over_the_cap_is_not_read() -> None:
    huge = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    )
    script = ((OK_204, False), (huge, True))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        with capture_logs() as logs, pytest.raises(KommoError) as caught:
            await client.lookup(JOHN)
        assert fast.sent == 1  # answered (oversized) on the warm connection, not resent
        assert caught.value.detail == f"answer larger than {MAX_BODY_BYTES} bytes"
        assert server.heads[1].startswith(f"GET {BY_PHONE_PATH}?phone={JOHN} HTTP/1.1".encode())
        assert b"Authorization: Bearer token\r\n" in server.heads[1]
        assert len(server.requests) == 2
        await wait_for(lambda: fast.ready)  # the unread connection was replaced
    assert "token" not in repr(logs)


async def test_a_journal_answer_over_the_cap_is_retried_later() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (MAX_BODY_BYTES + 1)
    )
    script = ((OK_204, False), (chunked, True))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        [answer] = await _journal(client).add_calls([_call("2.1")])
        assert fast.sent == 1 and len(server.requests) == 2
        assert answer.verdict is JournalVerdict.RETRY
        sent = json.loads(server.requests[1])
        assert [item["uniq"] for item in sent] == ["2.1"]


async def test_a_lookup_the_server_closes_without_answering_goes_again_the_ordinary_way() -> None:
    script = ((OK_204, False), (None, True))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        result = await client.lookup(JOHN)  # the resend's 204: nobody has this number
        assert result.entity is None and fast.sent == 0
        assert len(server.heads) == 3
        assert server.heads[1].split(b"\r\n")[0] == server.heads[2].split(b"\r\n")[0]
        assert client.stats.requests[BY_PHONE_PATH, 204] == 1
        assert client.stats.requests[BY_PHONE_PATH, None] == 0  # one answered request


async def test_a_journal_post_the_server_closes_without_answering_goes_again() -> None:
    attached = {"_embedded": {"calls": [{"request_id": "0", "entity_id": 1001}]}}
    script = ((OK_204, False), (None, True), (_json_answer("200 OK", attached), False))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        [answer] = await _journal(client).add_calls([_call("3.1")])
        assert answer.verdict is JournalVerdict.ATTACHED and answer.entity_id == 1001
        assert fast.sent == 0
        assert server.requests[1] == server.requests[2]  # the same body, sent again


async def test_a_429_with_retry_after_on_a_lookup_pauses_then_retries() -> None:
    too_many = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.2\r\nContent-Length: 0\r\n\r\n"
    script = ((OK_204, False), (too_many, False))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with capture_logs() as logs:
            result = await client.lookup(JOHN, within=5)
        assert loop.time() - started >= 0.2  # the header's pause was kept
        assert result.entity is None
        assert fast.sent == 1  # the 429 came back on the warm connection; the retry: ordinary
        assert client.stats.requests[BY_PHONE_PATH, 429] == 1
        assert client.stats.requests[BY_PHONE_PATH, 204] == 1
        assert client.stats.retries == 1
        assert len(server.heads) == 3
    [error] = [line for line in logs if line["event"] == "kommo.error"]
    assert error["status"] == 429 and error["endpoint"] == BY_PHONE_PATH
    assert "token" not in repr(logs)


async def test_a_429_with_retry_after_on_a_journal_post_is_retried_later() -> None:
    too_many = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n"
    script = ((OK_204, False), (too_many, False))
    async with ScriptedServer(*script) as server, _client(server.base_url, "token") as client:
        fast = await _warm(client)
        [answer] = await _journal(client).add_calls([_call("4.1")])
        assert answer.verdict is JournalVerdict.RETRY and answer.status == 429
        assert fast.sent == 1 and len(server.requests) == 2  # one attempt: the journal's rule
        # every request waits out the Retry-After
        assert client.transport.gate._until > time.monotonic() + 20


async def test_a_lookup_without_an_answer_times_out_within_its_budget(kommo: FakeKommo) -> None:
    async with _client(kommo.base_url, kommo.token, timeout=0.2) as client:
        fast = await _warm(client)
        await wait_for(lambda: len(fast._idle) == FAST_CONNECTIONS)
        kommo.set_delay(BY_PHONE_PATH, 2.0)
        with capture_logs(), pytest.raises(KommoError) as caught:
            await client.lookup(JOHN, within=0.3)
        assert caught.value.detail == "no answer within 0.2 s"
        assert client.stats.requests[BY_PHONE_PATH, None] >= 1
        assert fast.sent == 0
        await wait_for(lambda: len(fast._idle) == FAST_CONNECTIONS)  # the pool is whole again
