"""Asterisk 11 and older (AMI 1.x, issue 13 point 17): the banner is read and warned about, and
a channel created by a Dial (``Event: Dial``, ``SubEvent: Begin``) is never an inbound caller,
though it is born in an inbound context and gets a number later. Replays the synthesized
recordings in ``tests/data/ami-recordings/asterisk-1x`` through real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from kommo_callerid.core.models import FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import events_only, read_recording

from support import RECORDINGS, events, make_config, running_daemon, wait_for

LEGACY = RECORDINGS / "asterisk-1x"
NOTIFY = {"to": ["did", "ringing"], "dids": {"5551000": [7]}, "extensions": {"100": 8}}


@pytest.fixture
async def legacy_ami() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer(version="1.3") as server:
        yield server


async def test_an_ami_1x_dialled_trunk_leg_is_no_caller_and_the_real_caller_rings(
    legacy_ami: FakeAmiServer,
) -> None:
    outbound = events_only(read_recording(LEGACY / "01-outbound-trunk-leg-in-inbound-context.txt"))
    inbound = events_only(read_recording(LEGACY / "02-inbound-answered-18305803077.txt"))
    async with FakeKommo(demo_dataset(), rate_limit=None) as kommo:
        config = make_config(legacy_ami, kommo, notify=NOTIFY)
        with capture_logs() as logs:
            async with running_daemon(config):
                await legacy_ami.play(outbound)
                await legacy_ami.play(inbound)
                await wait_for(lambda: len(kommo.events) >= 2)
                await asyncio.sleep(0.5)  # the fallback and anything late would have come
    assert {(e.phone_number, e.users) for e in kommo.events} == {
        ("18305803077", (7,)),
        ("18305803077", (8,)),
    }
    incoming = events(logs, "call.incoming")
    assert [line["channel"] for line in incoming] == ["SIP/carrier-00000003"]
    skipped = [x for x in events(logs, "call.skipped") if x["reason"] == "not_inbound"]
    assert "SIP/carrier-00000002" in [x["channel"] for x in skipped]
    connected = events(logs, "ami.connected")
    assert connected[0]["ami_version"] == "1.3"
    warning = events(logs, "ami.legacy_version")
    assert warning and warning[0]["log_level"] == "warning"
    filters = [a["filter"] for a in legacy_ami.actions if a["action"] == "Filter"]
    assert "Event: Dial" in filters


async def test_a_modern_asterisk_gets_no_dial_filter_and_no_warning(ami: FakeAmiServer) -> None:
    async with FakeKommo(demo_dataset(), rate_limit=None) as kommo:
        with capture_logs() as logs:
            async with running_daemon(make_config(ami, kommo)):
                pass
    assert not events(logs, "ami.legacy_version")
    assert "Event: Dial" not in [a.get("filter") for a in ami.actions]


async def test_an_ami_1x_click_to_dial_through_a_local_pair_notifies_nobody(
    legacy_ami: FakeAmiServer,
) -> None:
    """The trunk leg of a click-to-dial is dialled by the Local ``;1`` half: its Dial says so,
    though it is born in the inbound context and learns its number late."""
    recording = events_only(read_recording(LEGACY / "03-click-to-dial-through-local.txt"))
    async with FakeKommo(demo_dataset(), rate_limit=None) as kommo:
        with capture_logs() as logs:
            async with running_daemon(make_config(legacy_ami, kommo, notify=NOTIFY)):
                await legacy_ami.play(recording)
                await wait_for(lambda: legacy_ami_events_read(logs, "SIP/carrier-00000008"))
                await asyncio.sleep(0.5)  # a notification would have come by now
    assert kommo.events == []
    assert not events(logs, "call.incoming")


async def test_an_ami_1x_queue_member_rings_through_a_local_pair(
    legacy_ami: FakeAmiServer,
) -> None:
    """The trunk dials ``Local/100@agents;1``: agent 100 rings for the call, once."""
    recording = events_only(read_recording(LEGACY / "04-inbound-queue-member-through-local.txt"))
    async with (
        FakeKommo(demo_dataset(), rate_limit=None) as kommo,
        running_daemon(make_config(legacy_ami, kommo, notify=NOTIFY)),
    ):
        await legacy_ami.play(recording)
        await wait_for(lambda: len(kommo.events) >= 2)
        await asyncio.sleep(0.5)  # a duplicate or a fallback would have come
    assert sorted((e.phone_number, e.users) for e in kommo.events) == [
        ("18305803077", (7,)),
        ("18305803077", (8,)),
    ]


def legacy_ami_events_read(logs: list[dict[str, object]], channel: str) -> bool:
    """True once the daemon has decided about ``channel`` (a call.skipped line names it)."""
    return any(line.get("channel") == channel for line in events(logs, "call.skipped"))


async def test_an_ami_1x_pbx_journals_nothing_rather_than_answered_calls_as_missed(
    legacy_ami: FakeAmiServer,
) -> None:
    """1.x has no Linkedid, DialEnd or bridges: an answered call would look missed (and get a
    call-back task). Its calls are notified, never journaled; the events are counted."""
    journaled: list[FinishedCall] = []
    inbound = events_only(read_recording(LEGACY / "04-inbound-queue-member-through-local.txt"))
    async with FakeKommo(demo_dataset(), rate_limit=None) as kommo:
        sink = type("Sink", (), {"record": staticmethod(journaled.append)})()
        daemon = Daemon(make_config(legacy_ami, kommo, notify=NOTIFY), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        await wait_for(lambda: daemon.ami_connected or serving.done())
        await legacy_ami.play(inbound)
        await wait_for(lambda: len(kommo.events) >= 2)
        await wait_for(lambda: daemon.table_sizes()["tracker"] == 0)  # the call has ended
        outcomes = daemon.table_sizes()["outcomes"]
        daemon.stop.set()
        assert await serving == EXIT_OK
    assert journaled == []
    assert outcomes == 0
