"""The client's view of whether notifications can go out (``/healthz`` ``kommo``)."""

from __future__ import annotations

from pydantic import SecretStr

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import NotifyOutcome
from kommo_callerid.kommo.client import KommoClient, KommoHealth
from kommo_callerid.kommo.health import BACKLOG_WINDOW
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset

from support import ManualClock


async def test_a_backlog_fades_after_a_quiet_while_and_clears_on_a_sent_notification() -> None:
    clock = ManualClock()
    async with FakeKommo(demo_dataset()) as fake:
        config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(fake.token))
        async with KommoClient(config, CacheConfig(), clock=clock, sleep=clock.sleep) as kommo:
            assert kommo.health is KommoHealth.OK
            assert await kommo.notify("18305803077", [1], within=0) is NotifyOutcome.DROPPED_TTL
            assert kommo.health is KommoHealth.BACKLOG
            clock.advance(BACKLOG_WINDOW)  # a quiet night after one bad minute: no outage
            assert kommo.health is KommoHealth.OK

            assert await kommo.notify("18305803077", [1], within=0) is NotifyOutcome.DROPPED_TTL
            assert kommo.health is KommoHealth.BACKLOG
            assert await kommo.notify("18305803077", [1], within=5) is NotifyOutcome.SENT
            assert kommo.health is KommoHealth.OK
