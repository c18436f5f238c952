"""Batched notifications: 500 calls in one second against Kommo's 7 requests/s."""

from __future__ import annotations

import asyncio

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo
from kommo_callerid.sim.recording import format_message
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


async def test_agents_whose_phones_ring_together_share_one_request(ami: FakeAmiServer) -> None:
    """A queue rings three phones at once: one notification names the three agents (before:
    one request per agent); each agent is notified once, the DID's user at once."""
    call = CallScenarios().inbound("18305803077", did="5551000", agents=("100", "101", "102"))
    async with FakeKommo(rate_limit=None) as kommo:
        extensions = {"100": 11, "101": 12, "102": 13}
        notify = {"dids": {"5551000": [7]}, "extensions": extensions, "to": ["did", "ringing"]}
        config = make_config(ami, kommo, notify=notify)
        async with running_daemon(config):
            ami.emit_raw(b"".join(format_message(event) for event in call.events))  # one read
            await wait_for(lambda: sum(len(e.users or ()) for e in kommo.events) >= 4, timeout=10)
            await asyncio.sleep(0.2)  # nothing more comes
    notified = [user for event in kommo.events for user in event.users or ()]
    assert sorted(notified) == [7, 11, 12, 13]
    assert kommo.events[0].users == (7,)
    assert kommo.requests_to(EVENTS_PATH) == 2
