"""The fake Kommo server itself: the tests and the demo rely on it behaving like Kommo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kommo_callerid.sim.kommo_app import (
    ACCOUNT_PATH,
    BY_PHONE_PATH,
    CONTACTS_PATH,
    EVENTS_PATH,
    FakeKommo,
)
from kommo_callerid.sim.kommo_data import demo_dataset, search_by_phone


@pytest.fixture
async def fake() -> AsyncIterator[FakeKommo]:
    async with FakeKommo() as server:
        yield server


@pytest.fixture
async def http(fake: FakeKommo) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with aiohttp.ClientSession(fake.base_url, headers=headers) as session:
        yield session


async def test_missing_or_wrong_token_is_401_problem_json(fake: FakeKommo) -> None:
    async with aiohttp.ClientSession(fake.base_url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with anonymous.get(ACCOUNT_PATH, headers=headers) as answer:
                assert answer.status == 401
                assert answer.content_type == "application/problem+json"
                body = await answer.json(content_type=None)
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"
    assert {"type", "detail"} <= body.keys()


async def test_by_phone_answers_items_or_204(http: aiohttp.ClientSession) -> None:
    async with http.get(BY_PHONE_PATH, params={"phone": "18305803077"}) as answer:
        assert answer.status == 200
        body = await answer.json(content_type=None)
    assert body["_embedded"]["items"] == [
        {"id": 1001, "name": "John Doe", "responsible_user_id": 8375357, "type": 1}
    ]
    async with http.get(BY_PHONE_PATH, params={"phone": "15550000000"}) as answer:
        assert answer.status == 204
        assert await answer.read() == b""


def test_demo_dataset_covers_every_by_phone_shape() -> None:
    data = demo_dataset()

    def answer(phone: str) -> dict[str, Any]:
        item = search_by_phone(data, phone)
        assert item is not None
        return item

    assert answer("+12125550142")["type"] == 3  # a company
    lead = answer("+14155550199")  # one active lead (a closed one is ignored)
    assert (lead["type"], lead["phone_entity"]["name"]) == (2, "Maria Garcia")
    customer = answer("+442079460958")
    assert (customer["type"], customer["phone_entity"]["type"]) == (12, 1)
    assert answer("+74951234567")["type"] == 1  # two active leads: the contact itself
    assert answer("+16465550123")["name"] == ""  # the lead without a name


async def test_contacts_search_is_hal_json_or_204(http: aiohttp.ClientSession) -> None:
    async with http.get(CONTACTS_PATH, params={"query": "8305803077"}) as answer:
        assert answer.content_type == "application/hal+json"
        body = await answer.json(content_type=None)
    assert [contact["name"] for contact in body["_embedded"]["contacts"]] == ["John Doe"]
    async with http.get(CONTACTS_PATH, params={"query": "99999999"}) as answer:
        assert answer.status == 204


async def test_events_are_recorded_with_users_or_none(
    fake: FakeKommo, http: aiohttp.ClientSession
) -> None:
    events = [
        {"type": "phone_call", "phone_number": "+18305803077", "users": [1, 2]},
        {"type": "phone_call", "phone_number": "+18305803077"},
    ]
    async with http.post(EVENTS_PATH, json={"add": events}) as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["_embedded"]["items"][0]["element_id"] == 1001
    assert [(e.phone_number, e.users) for e in fake.events] == [
        ("+18305803077", (1, 2)),
        ("+18305803077", None),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"add": []},
        {"add": [{"type": "sms", "phone_number": "1"}]},
        {"add": [{"type": "phone_call", "phone_number": ""}]},
        {"add": [{"type": "phone_call", "phone_number": "1", "users": None}]},
        {"add": [{"type": "phone_call", "phone_number": "1", "users": ["7"]}]},
    ],
)
async def test_bad_event_bodies_are_400(
    fake: FakeKommo, http: aiohttp.ClientSession, payload: object
) -> None:
    async with http.post(EVENTS_PATH, json=payload) as answer:
        assert answer.status == 400
        assert answer.content_type == "application/problem+json"
    assert fake.events == []


async def test_rate_limit_answers_429_and_counts_violations() -> None:
    async with FakeKommo(rate_limit=3) as fake:
        headers = {"Authorization": f"Bearer {fake.token}"}
        async with aiohttp.ClientSession(fake.base_url, headers=headers) as http:
            statuses = []
            for _ in range(5):
                async with http.get(ACCOUNT_PATH) as answer:
                    statuses.append(answer.status)
    assert statuses == [200, 200, 200, 429, 429]
    assert fake.violations == 2
    assert [record.status for record in fake.requests] == statuses


async def test_injected_failures_delays_and_by_phone_status(
    fake: FakeKommo, http: aiohttp.ClientSession
) -> None:
    fake.fail_next(ACCOUNT_PATH, 503, "<html>down</html>", content_type="text/html", times=2)
    fake.by_phone_status = 404
    fake.set_delay(CONTACTS_PATH, 0.05)
    for expected in (503, 503, 200):
        async with http.get(ACCOUNT_PATH) as answer:
            assert answer.status == expected
    async with http.get(BY_PHONE_PATH, params={"phone": "18305803077"}) as answer:
        assert answer.status == 404
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(CONTACTS_PATH, params={"query": "8305803077"}) as answer:
        assert answer.status == 200
    assert loop.time() - started >= 0.05
    assert fake.requests_to(ACCOUNT_PATH) == 3


async def test_account(http: aiohttp.ClientSession) -> None:
    async with http.get(ACCOUNT_PATH) as answer:
        body = await answer.json(content_type=None)
    assert {"id", "name", "subdomain"} <= body.keys()
