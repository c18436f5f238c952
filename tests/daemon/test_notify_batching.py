"""Batched notifications: 500 calls in one second against Kommo's 7 requests/s."""

from __future__ import annotations

import asyncio

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for


async def test_500_calls_in_a_second_are_all_notified_within_ttl(ami: FakeAmiServer) -> None:
    scenarios = CallScenarios()
    calls = [scenarios.inbound(f"1830{n:07d}", did="5551000") for n in range(500)]
    async with FakeKommo(rate_limit=7) as kommo:
        config = make_config(
            ami, kommo, notify={"dids": {"5551000": [7]}, "to": ["did", "responsible"]}
        )
        loop = asyncio.get_running_loop()
        async with running_daemon(config):
            started = loop.time()
            for tenth in range(10):
                for call in calls[tenth::10]:
                    await ami.play(call.events)
                await asyncio.sleep(0.1)
            await wait_for(lambda: len(kommo.events) >= 500, timeout=45)
            took = loop.time() - started
    assert len({event.phone_number for event in kommo.events}) == 500
    assert len(kommo.events) == 500
    assert kommo.violations == 0
    requests = kommo.requests_to(EVENTS_PATH)
    print(f"500 notifications in {requests} requests, the last after {took:.1f} s")
    assert requests < 100
    assert took < 45
