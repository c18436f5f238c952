"""The Kommo client against the fake Kommo server, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig, LookupMode
from kommo_callerid.core.models import Entity, EntityType, KommoError, NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.limits import Priority, RateLimiter, Sleep
from kommo_callerid.sim.kommo_app import (
    BY_PHONE_PATH,
    CONTACTS_PATH,
    EVENTS_PATH,
    PROBLEM_JSON,
    FakeKommo,
)
from kommo_callerid.sim.kommo_data import (
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
)

from support import ManualClock, events, refused_port, wait_for

TOKEN = "tok-" + "Zq9xLr2v" * 4
JOHN = "+18305803077"
UNKNOWN = "+15550009999"

DATA = KommoDataset(
    contacts=(
        FakeContact(1001, "John Doe", ("+1 830 580 3077",), 11, 100),
        FakeContact(1002, "Maria Garcia", ("+1 415 555 0199",), 12, 100),
        FakeContact(1003, "Wei Chen", ("+44 20 7946 0958",), 13, 100),
        FakeContact(1004, "Olga Petrova", ("+7 495 123 4567",), 14, 100),
        FakeContact(1005, "Sam Patel", ("+1 646 555 0123",), 15, 100),
        FakeContact(1006, "Newer Twin", ("+1 720 555 7777",), 16, 500),
        FakeContact(1007, "Older Twin", ("+1 303 555 7777",), 17, 50),
        FakeContact(1008, "Acme Receptionist", ("+1 212 555 0142",), 18, 10),
    ),
    companies=(
        FakeCompany(2001, "Acme Logistics", ("+1 212 555 0142",), 21, 900),
        FakeCompany(2002, "Globex", ("+1 312 555 0100",), 22, 100),
    ),
    leads=(
        FakeLead(3001, "Fleet renewal", 31, contact_ids=(1002,)),
        FakeLead(3002, "Old quote", 32, active=False, contact_ids=(1002,)),
        FakeLead(3003, "Office fit-out", 33, contact_ids=(1004,)),
        FakeLead(3004, "Warehouse lease", 34, contact_ids=(1004,)),
        FakeLead(3005, "", 35, contact_ids=(1005,)),
        FakeLead(3006, "Globex tender", 36, company_ids=(2002,)),
    ),
    customers=(FakeCustomer(4001, "Annual support", 41, contact_ids=(1003,)),),
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(DATA, token=TOKEN) as server:
        yield server


def make_client(
    base_url: str,
    *,
    lookup: LookupMode = LookupMode.BY_PHONE,
    cache: CacheConfig | None = None,
    clock: ManualClock | None = None,
    rate_limit: float = 1000.0,
    timeout: float = 5.0,
    token: str = TOKEN,
) -> KommoClient:
    config = KommoConfig(
        base_url=base_url,
        access_token=SecretStr(token),
        lookup=lookup,
        rate_limit=rate_limit,
        timeout=timeout,
    )
    if clock is None:
        return KommoClient(config, cache or CacheConfig())
    return KommoClient(config, cache or CacheConfig(), clock=clock, sleep=clock.sleep)


@pytest.fixture
async def client(fake: FakeKommo) -> AsyncIterator[KommoClient]:
    async with make_client(fake.base_url) as kommo:
        yield kommo


# -- by_phone shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "entity", "phone_entity"),
    [
        (JOHN, Entity(EntityType.CONTACT, 1001, "John Doe", 11), None),
        ("+13125550100", Entity(EntityType.LEAD, 3006, "Globex tender", 36),
         Entity(EntityType.COMPANY, 2002, "Globex", 22)),
        ("+14155550199", Entity(EntityType.LEAD, 3001, "Fleet renewal", 31),
         Entity(EntityType.CONTACT, 1002, "Maria Garcia", 12)),
        ("+442079460958", Entity(EntityType.CUSTOMER, 4001, "Annual support", 41),
         Entity(EntityType.CONTACT, 1003, "Wei Chen", 13)),
        # two active leads: the contact itself
        ("+74951234567", Entity(EntityType.CONTACT, 1004, "Olga Petrova", 14), None),
        # the oldest of two contacts sharing the last 7 digits, not the lowest id
        ("+17205557777", Entity(EntityType.CONTACT, 1007, "Older Twin", 17), None),
        # a company and a contact share the number: companies first
        ("+12125550142", Entity(EntityType.COMPANY, 2001, "Acme Logistics", 21), None),
        # only the last 7 digits count
        ("+9 999 580 3077", Entity(EntityType.CONTACT, 1001, "John Doe", 11), None),
        ("+16465550123", Entity(EntityType.LEAD, 3005, "Lead #3005", 35),
         Entity(EntityType.CONTACT, 1005, "Sam Patel", 15)),
    ],
)  # fmt: skip
async def test_by_phone_shapes(
    client: KommoClient, number: str, entity: Entity, phone_entity: Entity | None
) -> None:
    result = await client.lookup(number)
    assert (result.entity, result.phone_entity) == (entity, phone_entity)
    assert result.number == number
    assert result.source == "by_phone"
    assert result.responsible_user_id == entity.responsible_user_id


async def test_unknown_number_is_204_and_logged_with_empty_fields(client: KommoClient) -> None:
    with capture_logs() as logs:
        result = await client.lookup(UNKNOWN)
        await asyncio.sleep(0)  # the line comes a loop turn later (core.log_soon)
    assert result.entity is None and result.phone_entity is None
    [line] = events(logs, "kommo.lookup")
    assert line["entity_type"] is None and line["entity_id"] is None and line["name"] is None
    assert line["responsible_user_id"] is None and line["cached"] is False


async def test_lookup_log_line(client: KommoClient) -> None:
    with capture_logs() as logs:
        await client.lookup(JOHN)
        await asyncio.sleep(0)  # the line comes a loop turn later (core.log_soon)
    [line] = events(logs, "kommo.lookup")
    assert line["log_level"] == "info"
    assert {k: line[k] for k in ("entity_type", "entity_id", "name", "responsible_user_id")} == {
        "entity_type": "contact",
        "entity_id": 1001,
        "name": "John Doe",
        "responsible_user_id": 11,
    }
    assert line["cached"] is False and isinstance(line["ms"], float)
    assert JOHN not in json.dumps(line)  # the caller binds the number, not the client


@pytest.mark.parametrize(
    ("body", "entity", "phone_entity"),
    [
        ({"_embedded": {"items": []}}, None, None),
        (
            {"_embedded": {"items": [{
                "id": 7, "name": "Deal", "responsible_user_id": 5, "type": "lead",
                "phone_entity": {"id": 8, "name": "Pat", "type": "contact"},
            }]}},
            Entity(EntityType.LEAD, 7, "Deal", 5), Entity(EntityType.CONTACT, 8, "Pat", None),
        ),
        (
            {"_embedded": {"items": [{"id": "9", "name": "", "type": "12",
                                      "phone_entity": "garbage"}]}},
            Entity(EntityType.CUSTOMER, 9, "Customer #9", None), None,
        ),
    ],
)  # fmt: skip
async def test_defensive_by_phone_parsing(
    fake: FakeKommo,
    client: KommoClient,
    body: dict[str, Any],
    entity: Entity | None,
    phone_entity: Entity | None,
) -> None:
    fake.fail_next(BY_PHONE_PATH, 200, json.dumps(body), content_type="application/hal+json")
    result = await client.lookup(JOHN)
    assert (result.entity, result.phone_entity) == (entity, phone_entity)


# -- contacts mode and the auto fallback -------------------------------------------------


async def test_contacts_mode(fake: FakeKommo) -> None:
    async with make_client(fake.base_url, lookup=LookupMode.CONTACTS) as kommo:
        found = await kommo.lookup(JOHN)
        unknown = await kommo.lookup(UNKNOWN)
    assert found.entity == Entity(EntityType.CONTACT, 1001, "John Doe", 11)
    assert found.source == "contacts"
    assert unknown.entity is None
    assert fake.requests_to(BY_PHONE_PATH) == 0
    assert fake.requests_to(CONTACTS_PATH) == 2


async def test_contacts_mode_picks_the_oldest_contact(fake: FakeKommo) -> None:
    contacts = [
        {"id": 5, "name": "Newer", "responsible_user_id": 1, "created_at": 900},
        {"id": 6, "name": "Older", "responsible_user_id": 2, "created_at": 100},
    ]
    body = json.dumps({"_embedded": {"contacts": contacts}})
    fake.fail_next(CONTACTS_PATH, 200, body, content_type="application/hal+json")
    async with make_client(fake.base_url, lookup=LookupMode.CONTACTS) as kommo:
        result = await kommo.lookup(JOHN)
    assert result.entity == Entity(EntityType.CONTACT, 6, "Older", 2)


async def test_auto_falls_back_to_contacts_for_good(fake: FakeKommo) -> None:
    fake.by_phone_status = 404
    with capture_logs() as logs:
        async with make_client(fake.base_url, lookup=LookupMode.AUTO) as kommo:
            first = await kommo.lookup(JOHN)
            second = await kommo.lookup("+14155550199")
    assert first.entity is not None and first.entity.name == "John Doe"
    assert first.source == second.source == "contacts"
    assert fake.requests_to(BY_PHONE_PATH) == 1
    assert fake.requests_to(CONTACTS_PATH) == 2
    [switch] = events(logs, "kommo.error")
    assert (switch["status"], switch["endpoint"]) == (404, BY_PHONE_PATH)


async def test_auto_uses_by_phone_while_it_works(fake: FakeKommo) -> None:
    async with make_client(fake.base_url, lookup=LookupMode.AUTO) as kommo:
        result = await kommo.lookup("+14155550199")
    assert result.source == "by_phone"
    assert result.entity is not None and result.entity.type is EntityType.LEAD


async def test_by_phone_mode_does_not_fall_back(fake: FakeKommo, client: KommoClient) -> None:
    fake.by_phone_status = 404
    with pytest.raises(KommoError) as raised:
        await client.lookup(JOHN)
    assert raised.value.status == 404
    assert fake.requests_to(CONTACTS_PATH) == 0


# -- cache ---------------------------------------------------------------------------------


async def test_cache_ttl_and_negative_ttl(fake: FakeKommo) -> None:
    clock = ManualClock()
    cache = CacheConfig(ttl=300, negative_ttl=60)
    async with make_client(fake.base_url, cache=cache, clock=clock) as kommo:
        assert (await kommo.lookup(JOHN)).cached is False
        await kommo.lookup(UNKNOWN)
        clock.advance(59.9)
        hit = await kommo.lookup("1 (830) 580-3077")  # same digits, same entry
        assert hit.cached is True and hit.number == "1 (830) 580-3077"
        assert (await kommo.lookup(UNKNOWN)).cached is True
        assert fake.requests_to(BY_PHONE_PATH) == 2
        clock.advance(0.2)
        assert (await kommo.lookup(UNKNOWN)).cached is False
        clock.advance(239.8)
        assert (await kommo.lookup(JOHN)).cached is True
        clock.advance(0.2)
        assert (await kommo.lookup(JOHN)).cached is False
    assert fake.requests_to(BY_PHONE_PATH) == 4
    assert (kommo.stats.lookups, kommo.stats.cache_hits) == (7, 3)


async def test_cache_is_bounded_and_evicts_least_recently_used(fake: FakeKommo) -> None:
    a, b, c = JOHN, "+14155550199", "+442079460958"
    async with make_client(fake.base_url, cache=CacheConfig(max_entries=2)) as kommo:
        await kommo.lookup(a)
        await kommo.lookup(b)
        assert (await kommo.lookup(a)).cached  # a is now the most recently used
        await kommo.lookup(c)  # evicts b
        assert kommo.cache_size == 2
        assert (await kommo.lookup(a)).cached
        assert (await kommo.lookup(c)).cached
        assert not (await kommo.lookup(b)).cached
    assert fake.requests_to(BY_PHONE_PATH) == 4


async def test_failed_lookup_is_not_cached(fake: FakeKommo, client: KommoClient) -> None:
    fake.fail_next(BY_PHONE_PATH, 400, "<html><b>oops</b></html>", content_type="text/html")
    with pytest.raises(KommoError):
        await client.lookup(JOHN)
    result = await client.lookup(JOHN)
    assert result.cached is False and result.entity is not None
    assert fake.requests_to(BY_PHONE_PATH) == 2
    assert client.stats.lookups_failed == 1


# -- single flight ---------------------------------------------------------------------------


async def test_concurrent_lookups_of_one_number_make_one_request(
    fake: FakeKommo, client: KommoClient
) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.1)
    results = await asyncio.gather(*(client.lookup(JOHN) for _ in range(10)))
    assert fake.requests_to(BY_PHONE_PATH) == 1
    assert {result.entity for result in results} == {results[0].entity}
    assert results[0].entity is not None


async def test_a_waiter_that_gives_up_leaves_the_shared_request_to_the_others(
    fake: FakeKommo, client: KommoClient
) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.1)
    leader = asyncio.create_task(client.lookup(JOHN))
    follower = asyncio.create_task(client.lookup(JOHN))
    await asyncio.sleep(0.02)
    follower.cancel()
    result = await leader
    assert result.entity is not None and result.entity.id == 1001
    with pytest.raises(asyncio.CancelledError):
        await follower
    assert fake.requests_to(BY_PHONE_PATH) == 1


async def test_when_the_leading_waiter_gives_up_a_follower_asks_again(
    fake: FakeKommo, client: KommoClient
) -> None:
    """The request runs in the first caller's task (no hop through a task of its own, see
    kommo.single_flight): when that caller gives up, a follower leads a request of its own."""
    fake.set_delay(BY_PHONE_PATH, 0.1)
    impatient = asyncio.create_task(client.lookup(JOHN))
    patient = asyncio.create_task(client.lookup(JOHN))
    await asyncio.sleep(0.02)
    impatient.cancel()
    result = await patient
    assert result.entity is not None and result.entity.id == 1001
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert fake.requests_to(BY_PHONE_PATH) == 2
    assert client.table_sizes()["inflight"] == 0


async def test_a_shared_failure_reaches_every_waiter(fake: FakeKommo, client: KommoClient) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.05)
    fake.fail_next(BY_PHONE_PATH, 400, "bad request")
    outcomes = await asyncio.gather(
        *(client.lookup(JOHN) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, KommoError) for outcome in outcomes)
    assert fake.requests_to(BY_PHONE_PATH) == 1


async def test_a_failure_nobody_waits_for_is_not_an_unretrieved_exception(
    fake: FakeKommo, client: KommoClient
) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    fake.set_delay(BY_PHONE_PATH, 0.05)
    fake.fail_next(BY_PHONE_PATH, 400, "boom")
    waiters = [asyncio.create_task(client.lookup(JOHN)) for _ in range(2)]
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    # Nobody waits any more, so the shared request is given up (a call shed in a flood):
    # whether it was sent yet depends on the machine's load, never more than once.
    await wait_for(lambda: client.table_sizes()["inflight"] == 0, timeout=5)
    await asyncio.sleep(0.1)  # a request that was sent gets its (failed) answer meanwhile
    gc.collect()
    assert loop_errors == []
    assert fake.requests_to(BY_PHONE_PATH) <= 1


async def test_close_cancels_a_lookup_in_flight(fake: FakeKommo) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.2)
    kommo = make_client(fake.base_url)
    pending = asyncio.create_task(kommo.lookup(JOHN))
    await asyncio.sleep(0.05)
    await kommo.close()
    with pytest.raises(asyncio.CancelledError):
        await pending
    with pytest.raises(RuntimeError):
        await kommo.lookup(JOHN)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        (400, "<html><body>Bad request</body></html>", "text/html", "HTTP 400 (text/html)"),
        (200, "<html>login</html>", "text/html", "unexpected content type text/html"),
        (200, '{"_embedded": {"items": [', "application/json", "invalid JSON"),
        (402, json.dumps({"title": "Payment Required", "detail": "Account is not paid",
                          "status": 402}), PROBLEM_JSON, "Account is not paid"),
        (401, json.dumps({"title": "Unauthorized", "status": 401}), PROBLEM_JSON, "Unauthorized"),
        (200, "[]", "application/json", "unexpected answer: no _embedded.items list"),
        (200, '{"_embedded": {"items": [{"id": "x", "type": 1}]}}', "application/json",
         "unexpected answer: a contact without a valid id"),
        (200, '{"_embedded": {"items": [{"id": 5, "type": 99}]}}', "application/json",
         "unexpected answer: unknown entity type '99'"),
        (200, '{"_embedded": {"items": ["x"]}}', "application/json",
         "unexpected answer: an item is not an object"),
    ],
)  # fmt: skip
async def test_bad_answers_raise_kommo_error_and_log_it(
    fake: FakeKommo, client: KommoClient, answer: tuple[int, str, str, str]
) -> None:
    status, body, content_type, detail = answer
    fake.fail_next(BY_PHONE_PATH, status, body, content_type=content_type)
    with capture_logs() as logs, pytest.raises(KommoError) as raised:
        await client.lookup(JOHN)
    assert (raised.value.status, raised.value.endpoint, raised.value.detail) == (
        status,
        BY_PHONE_PATH,
        detail,
    )
    [line] = events(logs, "kommo.error")
    assert (line["status"], line["endpoint"], line["detail"]) == (status, BY_PHONE_PATH, detail)
    assert (await client.lookup(JOHN)).entity is not None  # and the client still works


async def test_huge_answer_is_capped(fake: FakeKommo, client: KommoClient) -> None:
    body = b'{"_embedded": {"items": [], "pad": "' + b"x" * (2 << 20) + b'"}}'
    fake.fail_next(BY_PHONE_PATH, 200, body, content_type="application/json")
    with pytest.raises(KommoError) as raised:
        await client.lookup(JOHN)
    assert raised.value.detail == "answer larger than 1048576 bytes"


async def test_timeout_is_a_kommo_error(fake: FakeKommo) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.15)
    async with make_client(fake.base_url, timeout=0.05) as kommo:
        with capture_logs() as logs, pytest.raises(KommoError) as raised:
            await kommo.lookup(JOHN)
    assert raised.value.status is None
    assert raised.value.detail == "no answer within 0.05 s"
    assert events(logs, "kommo.error")[0]["status"] is None
    assert kommo.stats.requests[BY_PHONE_PATH, None] == 1


async def test_connection_refused_is_a_kommo_error() -> None:
    with refused_port() as port:
        async with make_client(f"http://127.0.0.1:{port}") as kommo:
            with pytest.raises(KommoError) as raised:
                await kommo.lookup(JOHN, within=0.2)
            assert await kommo.notify(JOHN, None, within=0.2) is NotifyOutcome.DROPPED_TTL
    assert raised.value.status is None
    assert raised.value.detail.startswith("ClientConnectorError")


async def test_a_retry_without_a_slot_reports_the_last_failure_not_a_backlog() -> None:
    # One request a second: the retry (after at most 0.5 s of backoff) would need the slot
    # the refused attempt used, which frees after the deadline. The request was sent once;
    # what went wrong is the refusal (CI saw "a backlog of requests" on a slow machine).
    with refused_port() as port:
        async with make_client(f"http://127.0.0.1:{port}", rate_limit=1) as kommo:
            with capture_logs() as logs, pytest.raises(KommoError) as raised:
                await kommo.lookup(JOHN, within=0.6)
    assert raised.value.detail.startswith("ClientConnectorError")
    assert all(
        line["detail"].startswith("ClientConnectorError") for line in events(logs, "kommo.error")
    )


async def test_no_token_ever_reaches_the_logs(fake: FakeKommo) -> None:
    wrong = "wrong-" + "Kp3m" * 6
    with capture_logs() as logs:
        async with make_client(fake.base_url) as kommo:
            await kommo.lookup(JOHN)
            await kommo.notify(JOHN, [1], within=5)
            fake.fail_next(BY_PHONE_PATH, 400, "<html/>", content_type="text/html")
            with pytest.raises(KommoError):
                await kommo.lookup(UNKNOWN)
        async with make_client(fake.base_url, token=wrong) as bad:
            with pytest.raises(KommoError) as raised:
                await bad.lookup(JOHN)
            assert await bad.notify(JOHN, None, within=5) is NotifyOutcome.REJECTED
    assert raised.value.status == 401
    text = repr(logs)
    assert len(events(logs, "kommo.error")) == 3
    assert TOKEN not in text and wrong not in text
    assert "Bearer" not in text


# -- notifications ---------------------------------------------------------------------------


async def test_notify_named_users(fake: FakeKommo, client: KommoClient) -> None:
    with capture_logs() as logs:
        assert await client.notify(JOHN, (8375357, 8320148), within=5) is NotifyOutcome.SENT
    [event] = fake.events
    assert (event.phone_number, event.users) == (JOHN, (8375357, 8320148))
    [line] = events(logs, "kommo.notified")
    assert line["users"] == [8375357, 8320148] and line["attempt"] == 1
    assert isinstance(line["ms"], float)
    assert client.stats.notifications_sent == 1


async def test_notify_everyone_omits_users(fake: FakeKommo, client: KommoClient) -> None:
    with capture_logs() as logs:
        assert await client.notify(JOHN, None, within=5) is NotifyOutcome.SENT
    # the fake rejects "users": null, so a recorded None means the key was left out
    assert [event.users for event in fake.events] == [None]
    assert events(logs, "kommo.notified")[0]["users"] is None


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_notify_accepts_any_2xx_without_a_body(
    fake: FakeKommo, client: KommoClient, status: int
) -> None:
    fake.fail_next(EVENTS_PATH, status, b"")
    assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT


async def test_notify_rejected_is_not_retried_and_logged(
    fake: FakeKommo, client: KommoClient
) -> None:
    problem = json.dumps({"title": "Bad Request", "detail": "users: unknown user", "status": 400})
    fake.fail_next(EVENTS_PATH, 400, problem, content_type=PROBLEM_JSON)
    with capture_logs() as logs:
        assert await client.notify(JOHN, [999], within=5) is NotifyOutcome.REJECTED
    [line] = events(logs, "kommo.error")
    assert (line["status"], line["endpoint"], line["detail"]) == (
        400,
        EVENTS_PATH,
        "users: unknown user",
    )
    assert events(logs, "kommo.notified") == []
    [dropped] = events(logs, "kommo.notify_dropped")
    assert (dropped["reason"], dropped["detail"], dropped["attempts"]) == (
        "rejected",
        "users: unknown user",
        1,
    )
    assert fake.requests_to(EVENTS_PATH) == 1
    assert client.stats.notifications_failed == 1


async def test_request_counters(fake: FakeKommo, client: KommoClient) -> None:
    await client.lookup(JOHN)
    await client.lookup(UNKNOWN)
    await client.notify(JOHN, None, within=5)
    assert dict(client.stats.requests) == {(BY_PHONE_PATH, 200): 1, (BY_PHONE_PATH, 204): 1,
                                           (EVENTS_PATH, 200): 1}  # fmt: skip


# -- rate limit ------------------------------------------------------------------------------


def most_in_any_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + window) for start in ordered)


async def test_burst_never_exceeds_the_limit_as_seen_by_the_server() -> None:
    # Client and server share a clock that runs 5x faster, so four 1-second windows take 0.8 s.
    loop = asyncio.get_running_loop()
    speed = 5.0

    def fast_clock() -> float:
        return loop.time() * speed

    async def fast_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / speed)

    sleep: Sleep = fast_sleep
    async with FakeKommo(DATA, token=TOKEN, rate_limit=7, clock=fast_clock) as fake:
        config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(TOKEN))
        async with KommoClient(config, CacheConfig(), clock=fast_clock, sleep=sleep) as kommo:
            numbers = [f"+1555{n:07d}" for n in range(25)]
            lookups = [asyncio.create_task(kommo.lookup(number)) for number in numbers]
            await asyncio.sleep(0.01)  # 7 lookups under way, 18 waiting for the next window
            notified = await asyncio.gather(
                *(kommo.notify(JOHN, [n + 1], within=30) for n in range(5))
            )
            await asyncio.gather(*lookups)
    assert set(notified) == {NotifyOutcome.SENT}
    assert fake.violations == 0
    # the five notifications waited for the limit together, so they went in one request
    assert len(fake.requests) == 26
    assert len(fake.events) == 5
    assert most_in_any_window([record.at for record in fake.requests]) == 7
    # queued after 18 lookups, the notifications still went out in the second window (8..14)
    assert all(8 <= event.order <= 14 for event in fake.events)


async def test_limiter_window_is_exact() -> None:
    clock = ManualClock()
    limiter = RateLimiter(7, clock=clock, sleep=clock.sleep)
    starts: list[float] = []

    async def use() -> None:
        async with limiter.slot():
            starts.append(clock())

    await asyncio.gather(*(use() for _ in range(30)))
    assert most_in_any_window(starts) == 7
    assert starts[-1] - starts[0] == pytest.approx(4.0)


async def test_limiter_below_one_request_per_second() -> None:
    clock = ManualClock()
    limiter = RateLimiter(0.5, clock=clock, sleep=clock.sleep)
    starts: list[float] = []
    for _ in range(3):
        async with limiter.slot():
            starts.append(clock())
    assert [start - starts[0] for start in starts] == [0.0, 2.0, 4.0]


async def test_limiter_serves_notifications_first_and_survives_cancellation() -> None:
    clock = ManualClock()
    limiter = RateLimiter(2, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()
    served: list[str] = []

    async def hold() -> None:
        async with limiter.slot():
            await release.wait()

    async def use(name: str, priority: Priority) -> None:
        async with limiter.slot(priority):
            served.append(name)

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    names = ("lookup-1", "gives-up", "lookup-2")
    lookups = [asyncio.create_task(use(name, Priority.LOOKUP)) for name in names]
    await asyncio.sleep(0)
    notification = asyncio.create_task(use("notify", Priority.NOTIFY))
    await asyncio.sleep(0)
    lookups[1].cancel()
    release.set()
    await asyncio.gather(*holders, *lookups, notification, return_exceptions=True)
    assert served == ["notify", "lookup-1", "lookup-2"]


async def test_account_names_the_token_owner(client: KommoClient) -> None:
    account = await client.account()
    assert (account.id, account.name, account.subdomain) == (31_415_926, "Demo account", "demo")


async def test_cache_and_single_flight_under_load(fake: FakeKommo, client: KommoClient) -> None:
    fake.set_delay(BY_PHONE_PATH, 0.05)
    numbers = [f"+1415555{n:04d}" for n in range(20)]
    first = await asyncio.gather(*(client.lookup(numbers[i % 20]) for i in range(400)))
    assert fake.requests_to(BY_PHONE_PATH) == 20  # one request per number, however many ask
    again = await asyncio.gather(*(client.lookup(number) for number in numbers * 5))
    assert fake.requests_to(BY_PHONE_PATH) == 20
    assert all(result.cached for result in again)
    assert {r.number for r in first} == set(numbers)
