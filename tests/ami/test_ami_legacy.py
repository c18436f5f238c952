"""Asterisk 11 and older (AMI 1.x, issue 13 point 17): the banner is read and warned about, and
a channel created by a Dial (``Event: Dial``, ``SubEvent: Begin``) is never an inbound caller,
though it is born in an inbound context and gets a number later. Replays the synthesized
recordings in ``tests/data/ami-recordings/asterisk-1x`` through real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

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
