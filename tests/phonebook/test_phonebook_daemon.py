"""The daemon with ``[phonebook] enabled``: after the first sync, calls cost no by_phone
request and every lookup equals by_phone's answer; /healthz and /metrics show the mirror."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from phonebook_helpers import by_phone
from structlog.testing import capture_logs

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, running_daemon, wait_for

CALLERS = ("18305803077", "14155550199", "442079460958", "74951234567", "16465550123")
UNKNOWN = "13125550100"


async def test_sixty_calls_after_the_first_sync_ask_kommo_nothing(
    ami: FakeAmiServer, tmp_path: Path
) -> None:
    async with FakeKommo(demo_dataset()) as kommo:
        config = make_config(
            ami,
            kommo,
            phonebook={"enabled": True, "database": str(tmp_path / "pb.sqlite3")},
            http={"listen": "127.0.0.1:0"},
            notify={"to": ["responsible"], "fallback_after": 0.3},
        )
        scenarios = CallScenarios()
        numbers = [((*CALLERS, UNKNOWN))[i % 6] for i in range(60)]
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                await wait_for(lambda: bool(events(logs, "phonebook.synced")), timeout=10)
                for number in numbers:
                    call = scenarios.inbound(number, agents=())
                    await ami.play(call.events)
                    await ami.play(call.hangups)
                await wait_for(lambda: len(events(logs, "kommo.lookup")) >= 60, timeout=20)
                url = f"http://127.0.0.1:{daemon.http_port}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(url + "/healthz") as answer:
                        health = await answer.json()
                    async with http.get(url + "/metrics") as answer:
                        metrics = await answer.text()
    assert kommo.requests_to(BY_PHONE_PATH) == 0
    lookups = events(logs, "kommo.lookup")
    assert len(lookups) == 60
    assert {line["source"] for line in lookups} == {"phonebook"}
    for number, line in zip(numbers, lookups, strict=True):
        expected = by_phone(kommo.dataset, number)
        entity = expected[0] if expected else None
        assert line["entity_id"] == (entity.id if entity else None), number
        assert line["entity_type"] == (entity.type.value if entity else None), number
        assert line["responsible_user_id"] == (entity.responsible_user_id if entity else None)
    assert health["phonebook"]["entries"] == 6
    assert 0 <= health["phonebook"]["age_seconds"] < 30
    assert 'kommo_callerid_phonebook_lookups_total{source="phonebook"} 60.0' in metrics
    assert 'kommo_callerid_phonebook_entries{kind="contacts"} 5.0' in metrics
