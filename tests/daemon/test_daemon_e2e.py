"""The daemon end to end: fake AMI server -> daemon -> fake Kommo, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for

JOHN = "18305803077"  # responsible user 8375357 in the demo dataset
MARIA = "14155550199"  # an active lead, responsible user 8320148
UNKNOWN = "13125550100"


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


async def test_five_callers_notified_and_the_rest_skipped(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    scenarios = CallScenarios()
    callers = [JOHN, MARIA, "12125550142", "442079460958", UNKNOWN]
    calls = [scenarios.inbound(number, agents=("100", "101")) for number in callers]
    skipped = [scenarios.anonymous(), scenarios.inbound("101"), scenarios.internal("101", "102")]
    config = make_config(ami, kommo, notify={"extensions": {"100": 111}})
    with capture_logs() as logs:
        async with running_daemon(config):
            for call in calls + skipped:
                await ami.play(call.events)
            await wait_for(lambda: {e.phone_number for e in kommo.events} >= set(callers))
            for call in calls + skipped:
                await ami.play(call.hangups)
    assert {e.phone_number for e in kommo.events} == set(callers)
    for number in callers:  # no user is notified twice for one call
        users = [u for e in kommo.events if e.phone_number == number for u in e.users or ()]
        assert len(users) == len(set(users))
    reasons = {line["reason"] for line in logs if line["event"] == "call.skipped"}
    assert reasons >= {"anonymous", "internal", "duplicate", "not_inbound"}
    incoming = [line for line in logs if line["event"] == "call.incoming"]
    assert len(incoming) == len(callers)


async def test_ringing_extension_user_is_notified(ami: FakeAmiServer, kommo: FakeKommo) -> None:
    call = CallScenarios().inbound(UNKNOWN, agents=("101",), via_local=False)
    config = make_config(ami, kommo, notify={"extensions": {"101": 111}, "to": ["ringing"]})
    async with running_daemon(config):
        await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 1)
    assert kommo.events[0].users == (111,)


async def test_did_users_are_notified_at_once_without_waiting_for_lookup(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    kommo.set_delay(BY_PHONE_PATH, 1.0)
    call = CallScenarios().inbound(JOHN, did="5551000", agents=())
    config = make_config(ami, kommo, notify={"dids": {"5551000": [7, 8]}})
    async with running_daemon(config) as daemon:
        await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 1, timeout=0.8)
        assert kommo.events[0].users == (7, 8)
        await wait_for(lambda: len(kommo.events) == 2, timeout=3)
        assert daemon.ami_connected
    assert kommo.events[1].users == (8375357,)  # the responsible user, once the lookup returns


async def test_responsible_user_of_a_lead_is_notified(ami: FakeAmiServer, kommo: FakeKommo) -> None:
    call = CallScenarios().inbound(MARIA, agents=())
    config = make_config(ami, kommo, notify={"to": ["responsible"]})
    async with running_daemon(config):
        await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 1)
    assert kommo.events[0].users == (8320148,)


async def test_unknown_caller_with_nobody_to_notify_falls_back_to_everyone(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    call = CallScenarios().inbound(UNKNOWN, agents=("100",))
    config = make_config(ami, kommo, notify={"to": ["did", "responsible"]})
    async with running_daemon(config):
        await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 1)
    assert kommo.events[0].users is None


async def test_fallback_waits_for_ringing_legs_then_notifies_everyone_once(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    call = CallScenarios().inbound(UNKNOWN, agents=("100",))
    config = make_config(ami, kommo, notify={"fallback_after": 0.2})
    async with running_daemon(config):
        await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 1)
        await asyncio.sleep(0.4)  # the fallback is sent once, and nothing after it
    assert kommo.events[0].users is None
    assert len(kommo.events) == 1


async def test_kommo_errors_do_not_stop_the_daemon(ami: FakeAmiServer, kommo: FakeKommo) -> None:
    # 400 is not retried: the lookup fails, so the call falls back to everyone.
    kommo.fail_next(BY_PHONE_PATH, 400, "<html>oops</html>", content_type="text/html")
    scenarios = CallScenarios()
    config = make_config(ami, kommo, notify={"to": ["responsible"]})
    with capture_logs() as logs:
        async with running_daemon(config):
            await ami.play(scenarios.inbound(JOHN, agents=()).events)
            await wait_for(lambda: len(kommo.events) == 1)  # fallback: everyone
            await ami.play(scenarios.inbound(MARIA, agents=()).events)
            await wait_for(lambda: len(kommo.events) == 2)
    assert kommo.events[0].users is None
    assert kommo.events[1].users == (8320148,)
    assert any(line["event"] == "kommo.error" for line in logs)


async def test_reconnects_after_the_server_drops_the_link(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    scenarios = CallScenarios()
    config = make_config(ami, kommo, notify={"to": ["responsible"]})
    async with running_daemon(config) as daemon:
        ami.drop()
        await wait_for(lambda: not daemon.ami_connected)
        await wait_for(lambda: daemon.ami_connected)
        await ami.play(scenarios.inbound(JOHN, agents=()).events)
        await wait_for(lambda: len(kommo.events) == 1)
    assert ami.logins == 2
