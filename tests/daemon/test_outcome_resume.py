"""Calls across a lost AMI link reach the journal (issue 18, point 7): after the relogin the
daemon asks the PBX which channels are up and follows those calls to their end, without
notifying them again. Real sockets: fake AMI server -> daemon -> journal sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from test_outcome_wiring import CollectingSink

from kommo_callerid.core.models import CallStatus
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, wait_for

DID = {"dids": {"5551000": [7]}, "to": ["did"]}


@asynccontextmanager
async def journaling_daemon(
    sink: CollectingSink,
) -> AsyncIterator[tuple[Daemon, FakeAmiServer, FakeKommo]]:
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset(), rate_limit=None) as kommo:
        daemon = Daemon(make_config(ami, kommo, notify=DID), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.ami_connected or serving.done())
            yield daemon, ami, kommo
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK


def listings(ami: FakeAmiServer) -> int:
    return sum(1 for action in ami.actions if action.get("action") == "CoreShowChannels")


def untracked(daemon: Daemon) -> dict[str, int]:
    running = daemon._running  # a test looks inside
    assert running is not None
    return running.outcomes.untracked()


async def test_a_call_in_progress_when_the_link_drops_is_journaled_after_the_relogin() -> None:
    sink = CollectingSink()
    call = CallScenarios().inbound(agents=("100", "101"))
    async with journaling_daemon(sink) as (daemon, ami, kommo):
        await ami.play(call.events)  # answered by 100, still talking
        await wait_for(lambda: len(kommo.events) == 1)
        await wait_for(lambda: daemon.table_sizes()["queue"] == 0)
        ami.drop()
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
        await wait_for(lambda: listings(ami) == 2)
        await asyncio.sleep(1.2)  # talking on
        await ami.play(call.hangups)
        await wait_for(lambda: len(sink.calls) == 1)  # before: 0 records (link_lost 1)
        assert untracked(daemon)["link_lost"] == 0
        assert daemon.table_sizes()["outcomes"] == 0
    (record,) = sink.calls
    assert (record.call_id, record.status, record.answered_by) == (
        call.linkedid,
        CallStatus.ANSWERED,
        "100",
    )
    assert 1 <= record.duration <= 4, record.duration
    assert len(kommo.events) == 1  # notified once, before the drop


async def test_a_call_that_started_while_the_link_was_down_is_taken_up_not_notified() -> None:
    sink = CollectingSink()
    call = CallScenarios().inbound(agents=("100",))
    async with journaling_daemon(sink) as (daemon, ami, kommo):
        ami.users[DEMO_USERNAME] = AmiUser("changed-by-the-admin")
        ami.drop()
        await wait_for(lambda: ami.login_failures >= 1)
        started = time.time()
        await ami.play(call.events)  # nobody is logged in: the PBX alone knows of it
        await asyncio.sleep(1.2)
        ami.users[DEMO_USERNAME] = AmiUser(DEMO_SECRET)
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
        await wait_for(lambda: daemon.table_sizes()["outcomes"] == 1)
        await ami.play(call.hangups)
        await wait_for(lambda: len(sink.calls) == 1)
    (record,) = sink.calls
    assert (record.status, record.answered_by, record.phone) == (
        CallStatus.ANSWERED,
        "100",
        call.caller_num,
    )
    assert abs(record.started_at - started) < 1.5  # from the PBX's Duration
    assert 1 <= record.duration <= 4, record.duration
    assert kommo.events == []  # a call taken up is journaled, never notified


async def test_without_a_channel_list_a_call_across_the_gap_is_counted_lost() -> None:
    """No ``write = system``: CoreShowChannels is refused, and the call from before the gap
    is dropped and counted (``link_lost``), as before; nothing waits for it forever."""
    user = AmiUser(DEMO_SECRET, write=frozenset())
    sink = CollectingSink()
    async with (
        FakeAmiServer(users={DEMO_USERNAME: user}) as ami,
        FakeKommo(demo_dataset()) as kommo,
    ):
        daemon = Daemon(make_config(ami, kommo), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        await wait_for(lambda: daemon.ami_connected)
        await ami.play(CallScenarios().inbound(agents=("100",)).events)
        await wait_for(lambda: daemon.table_sizes()["outcomes"] == 1)
        ami.drop()
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
        await wait_for(lambda: daemon.table_sizes()["outcomes"] == 0)
        assert untracked(daemon)["link_lost"] == 1
        daemon.stop.set()
        assert await serving == EXIT_OK
    assert listings(ami) == 2 and sink.calls == []


async def test_an_ami_1x_pbx_is_not_asked_for_its_channels() -> None:
    async with FakeAmiServer(version="1.3") as ami, FakeKommo(demo_dataset()) as kommo:
        daemon = Daemon(make_config(ami, kommo, ami={"ping_interval": 0.05}))
        serving = asyncio.create_task(daemon.serve())
        await wait_for(lambda: daemon.ami_connected)
        ami.drop()
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
        # The list would go out before the session's first Ping (it is not slept on).
        await wait_for(lambda: ami.actions[-1].get("action") == "Ping")
        daemon.stop.set()
        assert await serving == EXIT_OK
    assert listings(ami) == 0
