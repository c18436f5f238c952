"""Hostile or buggy Kommo answers, through real sockets: odd JSON is a failed lookup like
any other (logged, the caller's fallback fires), and a 2xx is a success whatever its body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import KommoError, NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, EVENTS_PATH, FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, running_daemon, wait_for

JOHN = "18305803077"
ODD_ANSWERS = [
    '{"_embedded": {"items": [{"id": "²", "type": "contact"}]}}',
    '{"_embedded": {"items": [{"id": 5, "type": "²"}]}}',
    '{"_embedded": {"items": [{"id": "' + "1" * 5000 + '", "type": 1}]}}',
    '{"_embedded": {"items": [{"id": ' + "1" * 5000 + ', "type": 1}]}}',
    '{"_embedded": {"items": ' + "[" * 50_000 + "]" * 50_000 + "}}",
]


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


def _client(kommo: FakeKommo) -> KommoClient:
    config = KommoConfig(base_url=kommo.base_url, access_token=SecretStr(kommo.token))
    return KommoClient(config, CacheConfig())


@pytest.mark.parametrize(
    "body",
    ODD_ANSWERS,
    ids=["sup2-id", "sup2-type", "5000-digit-id-str", "5000-digit-id", "deep-nesting"],
)
async def test_an_odd_answer_is_a_logged_failed_lookup(kommo: FakeKommo, body: str) -> None:
    kommo.fail_next(BY_PHONE_PATH, 200, body, content_type="application/json")
    async with _client(kommo) as client:
        with capture_logs() as logs, pytest.raises(KommoError):
            await client.lookup(JOHN)
        [line] = events(logs, "kommo.error")
        assert line["endpoint"] == BY_PHONE_PATH
        assert (await client.lookup(JOHN)).entity is not None  # and the client still works


async def test_a_2xx_with_a_huge_body_is_a_sent_notification(kommo: FakeKommo) -> None:
    huge = json.dumps({"pad": "x" * (2 << 20)})
    kommo.fail_next(EVENTS_PATH, 200, huge, content_type="application/json")
    async with _client(kommo) as client:
        with capture_logs() as logs:
            outcome = await client.notify(JOHN, [1], within=5)
    assert outcome is NotifyOutcome.SENT
    assert events(logs, "kommo.notify_dropped") == []
    assert client.stats.notifications_sent == 1


async def test_an_odd_answer_still_lets_the_fallback_fire(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    kommo.fail_next(BY_PHONE_PATH, 200, ODD_ANSWERS[0], content_type="application/json")
    call = CallScenarios().inbound(JOHN, agents=())
    config = make_config(ami, kommo, notify={"to": ["responsible"]})
    with capture_logs() as logs:
        async with running_daemon(config):
            await ami.play(call.events)
            await wait_for(lambda: len(kommo.events) == 1)
    assert kommo.events[0].users is None  # everyone: nobody could be named
    assert events(logs, "daemon.task_failed") == []
    assert events(logs, "kommo.error")
