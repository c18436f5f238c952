"""Notifications waiting for the rate limit travel together in one POST /api/v2/events."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo

from support import events


async def test_waiting_notifications_share_a_request_and_expired_ones_leave() -> None:
    async with FakeKommo(rate_limit=1) as fake:
        config = KommoConfig(
            base_url=fake.base_url, access_token=SecretStr(fake.token), rate_limit=1
        )
        async with KommoClient(config, CacheConfig()) as kommo:
            with capture_logs() as logs:
                lone = await kommo.notify("+15550000001", [1], within=5)
                # the next second's slot is a second away: these wait for it together
                waiting = [
                    asyncio.create_task(kommo.notify(f"+1555000001{n}", [n + 2], within=5))
                    for n in range(3)
                ]
                late = asyncio.create_task(kommo.notify("+15550000099", None, within=0.3))
                outcomes = await asyncio.gather(*waiting, late)
    assert lone is NotifyOutcome.SENT
    assert outcomes == [NotifyOutcome.SENT] * 3 + [NotifyOutcome.DROPPED_TTL]
    assert fake.requests_to(EVENTS_PATH) == 2
    assert [event.order for event in fake.events] == [1, 2, 2, 2]
    assert [event.users for event in fake.events][1:] == [(2,), (3,), (4,)]
    assert fake.violations == 0
    assert sorted(line["batch"] for line in events(logs, "kommo.notified")) == [1, 3, 3, 3]
    assert [line["reason"] for line in events(logs, "kommo.notify_dropped")] == ["ttl"]


async def test_a_batch_holds_at_most_fifty() -> None:
    async with FakeKommo(rate_limit=1) as fake:
        config = KommoConfig(
            base_url=fake.base_url, access_token=SecretStr(fake.token), rate_limit=1
        )
        async with KommoClient(config, CacheConfig()) as kommo:
            await kommo.notify("+15550000001", [1], within=5)
            outcomes = await asyncio.gather(
                *(kommo.notify(f"+1555{n:07d}", [7], within=5) for n in range(60))
            )
    assert set(outcomes) == {NotifyOutcome.SENT}
    sizes = sorted(
        sum(1 for event in fake.events if event.order == order)
        for order in {event.order for event in fake.events}
    )
    assert sizes == [1, 10, 50]
