"""The notifier marks a call from its lookup to its notification (the journal lets it pass)."""

from __future__ import annotations

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for


async def test_a_call_is_on_the_hot_path_from_its_lookup_to_its_notification(
    ami: FakeAmiServer,
) -> None:
    call = CallScenarios().inbound("18305803077", did="5551000")
    async with FakeKommo() as kommo:
        kommo.set_delay(BY_PHONE_PATH, 0.3)
        config = make_config(ami, kommo, notify={"to": ["responsible"]})
        async with running_daemon(config) as daemon:
            assert not daemon.hot_path.busy
            await ami.play(call.events)
            await wait_for(lambda: daemon.hot_path.busy)
            assert not kommo.events  # the lookup is still out
            await wait_for(lambda: len(kommo.events) == 1)
            await wait_for(lambda: not daemon.hot_path.busy)
