"""The simulator itself: the fake AMI server's wire bytes, the scenarios, the recording helpers.

The server is checked against the bytes real Asterisk sent (tests/data/ami-recordings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import pytest

from kommo_callerid.sim.ami_server import AmiUser, FakeAmiServer
from kommo_callerid.sim.recording import (
    banner_version,
    events_only,
    format_message,
    parse_ami_stream,
    read_recording,
)
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

from support import RECORDINGS as ALL_RECORDINGS

RECORDINGS = ALL_RECORDINGS / "asterisk-22"
ASTERISK_22 = sorted(p for p in RECORDINGS.glob("*.txt") if not p.name.endswith(".actions.txt"))
USERS = {
    "callerid": AmiUser("callerid-secret"),
    "wrongperm": AmiUser("wrongperm-secret", read=frozenset({"system"}), write=frozenset()),
}
LOGIN = (
    b"Action: Login\r\nUsername: callerid\r\nSecret: callerid-secret\r\nActionID: login-1\r\n\r\n"
)
LOGIN_OK = b"Response: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n"


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer(USERS, version="11.0.0") as fake:
        yield fake


class Peer:
    """A raw AMI client: bytes in, bytes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: FakeAmiServer) -> Peer:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def message(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)

    async def ask(self, action: bytes) -> bytes:
        self.writer.write(action)
        return await self.message()

    async def login(self, action: bytes = LOGIN) -> None:
        assert await self.reader.readline() == b"Asterisk Call Manager/11.0.0\r\n"
        assert await self.ask(action) == LOGIN_OK

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def peer(server: FakeAmiServer) -> AsyncIterator[Peer]:
    client = await Peer.open(server)
    await client.login()
    await client.message()  # FullyBooted
    yield client
    await client.close()


def recorded(prefix: str) -> bytes:
    return next(p for p in ASTERISK_22 if p.name.startswith(prefix)).read_bytes()


# ---- the wire, compared with real Asterisk ----


async def test_wrong_secret_bytes_match_asterisk(server: FakeAmiServer) -> None:
    client = await Peer.open(server)
    actions = next(RECORDINGS.glob("11-*.actions.txt")).read_bytes()
    assert await client.reader.readline() == b"Asterisk Call Manager/11.0.0\r\n"
    client.writer.write(actions)
    assert await asyncio.wait_for(client.reader.read(), 2.0) == recorded("11-").split(b"\r\n", 1)[1]
    assert (server.login_failures, server.logins) == (1, 0)
    await client.close()


async def test_login_ping_and_logoff_bytes_match_asterisk(server: FakeAmiServer) -> None:
    real = parse_ami_stream(recorded("10-"))
    client = await Peer.open(server)
    await client.login(LOGIN.replace(b"callerid", b"wrongperm"))
    booted = parse_ami_stream(await client.message())[0]
    assert list(booted) == list(real[1])
    assert booted["Privilege"] == "system,all"
    pong = parse_ami_stream(await client.ask(b"Action: Ping\r\nActionID: ping-10\r\n\r\n"))[0]
    assert list(pong) == list(real[3])
    assert {k: v for k, v in pong.items() if k != "Timestamp"} == {
        k: v for k, v in real[3].items() if k != "Timestamp"
    }
    client.writer.write(b"Action: Logoff\r\nActionID: logoff-1\r\n\r\n")
    assert await asyncio.wait_for(client.reader.read(), 2.0) == format_message(real[4])
    await client.close()


async def test_actions_before_login_are_denied(server: FakeAmiServer) -> None:
    client = await Peer.open(server)
    await client.reader.readline()
    answer = await client.ask(b"Action: Ping\r\nActionID: p\r\n\r\n")
    assert answer == b"Response: Error\r\nActionID: p\r\nMessage: Permission denied\r\n\r\n"
    await client.close()


async def test_unknown_action_and_filter_permissions(server: FakeAmiServer, peer: Peer) -> None:
    answer = await peer.ask(b"Action: MixMonitorMute\r\nActionID: o\r\n\r\n")
    assert answer == b"Response: Error\r\nActionID: o\r\nMessage: Invalid/unknown command\r\n\r\n"
    bad = await peer.ask(b"Action: Filter\r\nOperation: Add\r\nFilter: !(\r\n\r\n")
    assert bad == b"Response: Error\r\nMessage: Filter Not Added\r\n\r\n"
    assert server.sessions[0].filters == []

    denied = await Peer.open(server)
    await denied.login(LOGIN.replace(b"callerid", b"wrongperm"))
    await denied.message()  # FullyBooted
    answer = await denied.ask(b"Action: Filter\r\nOperation: Add\r\nFilter: Event: Hangup\r\n\r\n")
    assert answer == b"Response: Error\r\nMessage: Permission denied\r\n\r\n"
    await denied.close()


async def test_events_go_only_to_sessions_allowed_to_read_them(
    server: FakeAmiServer, peer: Peer
) -> None:
    system_only = await Peer.open(server)
    await system_only.login(LOGIN.replace(b"callerid", b"wrongperm"))
    await system_only.message()
    events_off = await Peer.open(server)
    await events_off.login(LOGIN.replace(b"\r\n\r\n", b"\r\nEvents: off\r\n\r\n"))

    call = CallScenarios().inbound(agents=())
    assert server.emit(call.events[0]) == 1
    assert await peer.message() == format_message(call.events[0])
    assert server.emit({"Event": "Reload", "Privilege": "system,all"}) == 2
    assert parse_ami_stream(await system_only.message())[0]["Event"] == "Reload"
    with pytest.raises(TimeoutError):
        await events_off.message(timeout=0.1)
    for client in (system_only, events_off):
        await client.close()


async def test_filters_include_and_exclude_like_asterisk(server: FakeAmiServer, peer: Peer) -> None:
    for pattern in (b"Event: New", b"!Event: NewCallerid"):
        answer = await peer.ask(
            b"Action: Filter\r\nOperation: Add\r\nFilter: " + pattern + b"\r\n\r\n"
        )
        assert b"Filter Added Successfully" in answer
    assert server.sessions[0].filters == ["Event: New", "!Event: NewCallerid"]
    call = CallScenarios().inbound(agents=("100",), via_local=False)
    passed = [server.emit(event) for event in call.all_events]
    assert passed == [1 if e["Event"] == "Newchannel" else 0 for e in call.all_events]


async def test_events_action_switches_the_stream(server: FakeAmiServer, peer: Peer) -> None:
    answer = await peer.ask(b"Action: Events\r\nEventMask: off\r\n\r\n")
    assert answer == b"Response: Success\r\nEvents: Off\r\n\r\n"
    assert server.emit(CallScenarios().inbound().events[0]) == 0
    assert await peer.ask(b"Action: Events\r\nEventMask: call\r\n\r\n") == (
        b"Response: Success\r\nEvents: On\r\n\r\n"
    )
    assert server.emit(CallScenarios().inbound().events[0]) == 1


async def test_hang_keeps_the_socket_silent_until_unhang(server: FakeAmiServer, peer: Peer) -> None:
    server.hang()
    peer.writer.write(b"Action: Ping\r\nActionID: p\r\n\r\n")
    with pytest.raises(TimeoutError):
        await peer.message(timeout=0.2)
    assert server.emit(CallScenarios().inbound().events[0]) == 0
    server.unhang()
    assert b"Ping: Pong" in await peer.message()


async def test_drop_resets_every_connection(server: FakeAmiServer, peer: Peer) -> None:
    server.drop()
    with suppress(ConnectionResetError):  # an abort may arrive as EOF or as a reset
        assert await asyncio.wait_for(peer.reader.read(), 2.0) == b""
    await asyncio.sleep(0)
    assert all(session.closed for session in server.sessions)


async def test_wait_logged_in_counts_logins(server: FakeAmiServer) -> None:
    with pytest.raises(TimeoutError):
        await server.wait_logged_in(1, timeout=0.05)
    client = await Peer.open(server)
    await client.login()
    await server.wait_logged_in(1, timeout=1.0)
    assert server.actions[0]["secret"] == "********"
    await client.close()


async def test_play_keeps_order_and_delay(server: FakeAmiServer, peer: Peer) -> None:
    events = list(CallScenarios().inbound(agents=()).all_events)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await server.play(events, delay=0.05) == 2
    assert loop.time() - started >= 0.1
    assert [await peer.message() for _ in events] == [format_message(e) for e in events]


async def test_core_show_channels_lists_what_the_events_left_up(
    server: FakeAmiServer, peer: Peer
) -> None:
    """Like a PBX: a dropped link leaves the channels up; a bridge shows in BridgeId, a
    Hangup takes the channel away."""
    call = CallScenarios().inbound(agents=("100",), via_local=False)
    server.drop()  # nobody receives the events: the channels are up all the same
    for event in call.events:
        server.emit(event)
    listed = server.pbx_channels.listed()
    assert [c["Linkedid"] for c in listed] == [call.linkedid] * 2
    assert listed[0]["Uniqueid"] == call.linkedid  # the root, then the agent's phone
    assert {c["BridgeId"] for c in listed} == {f"bridge-{listed[1]['Uniqueid']}"}
    assert listed[0]["Context"] == "from-trunk" and listed[0]["Duration"] == "00:00:00"
    assert list(listed[0])[-4:] == ["BridgeId", "Application", "ApplicationData", "Duration"]
    server.emit(call.events[-1] | {"Event": "BridgeLeave"})
    assert server.pbx_channels.listed()[0]["BridgeId"] == ""
    for event in call.hangups:
        server.emit(event)
    assert server.pbx_channels.listed() == []


# ---- recording helpers ----


@pytest.mark.parametrize("path", ASTERISK_22, ids=lambda p: p.name[:2])
def test_a_recording_parses_and_formats_back_to_its_bytes(path: Path) -> None:
    data = path.read_bytes()
    messages = read_recording(path)
    assert banner_version(data) == "11.0.0"
    assert b"".join(format_message(m) for m in messages) == data.split(b"\r\n", 1)[1]


def test_parse_skips_comments_banners_and_keeps_the_first_repeat() -> None:
    stream = "; --- note ---\r\nAsterisk Call Manager/2.10.4\r\nEvent: A\r\nX: 1\r\nX: 2\nY:z\r\n"
    assert parse_ami_stream(stream) == [{"Event": "A", "X": "1", "Y": "z"}]
    assert banner_version(b"Event: A\r\n\r\n") is None
    messages = [{"Response": "Success"}, {"Event": "Newchannel"}, {"Event": "Hangup"}]
    assert events_only(messages) == messages[1:]
    assert events_only(messages, names=["Hangup"]) == [{"Event": "Hangup"}]


# ---- scenarios ----


def _recorded_newchannel() -> dict[str, str]:
    return events_only(read_recording(ASTERISK_22[0]), ["Newchannel"])[0]


def _channels(call: SyntheticCall) -> list[str]:
    return [e["Channel"] for e in call.events if e["Event"] == "Newchannel"]


def test_inbound_call_looks_like_the_recordings() -> None:
    call = CallScenarios().inbound("18305803077", did="5551000", agents=("100", "101"))
    root = call.events[0]
    assert list(root) == list(_recorded_newchannel())
    assert (root["Uniqueid"], root["Context"], root["Exten"]) == (
        call.linkedid,
        "from-trunk",
        "5551000",
    )
    assert root["CallerIDNum"] == "18305803077"
    channels = _channels(call)
    assert channels[0].startswith("PJSIP/carrier-")
    assert [c.split("-")[0] for c in channels[1:4]] == [
        "Local/100@from",
        "Local/100@from",
        "PJSIP/100",
    ]
    assert channels[1].endswith(";1") and channels[2].endswith(";2")
    assert {e["Linkedid"] for e in call.all_events} == {call.linkedid}
    assert sorted(e["Channel"] for e in call.hangups) == sorted(channels)
    assert all(e["Event"] == "Hangup" and "Cause" in e for e in call.hangups)
    phone = next(e for e in call.events if e["Channel"].startswith("PJSIP/101"))
    assert (phone["Context"], phone["ChannelState"]) == ("from-internal", "0")
    assert phone["Uniqueid"] != call.linkedid


def test_uniqueids_are_unique_and_increasing_across_calls() -> None:
    scenarios = CallScenarios()
    calls = [*scenarios.inbound_calls(3), scenarios.internal(), scenarios.outbound()]
    born = [e["Uniqueid"] for c in calls for e in c.events if e["Event"] == "Newchannel"]
    keys = [tuple(int(part) for part in uid.split(".")) for uid in born]
    assert keys == sorted(keys) and len(set(born)) == len(born)
    assert len({c.caller_num for c in calls[:3]}) == 3


def test_anonymous_internal_and_outbound_calls() -> None:
    scenarios = CallScenarios()
    anonymous = scenarios.anonymous()
    assert (anonymous.events[0]["CallerIDNum"], anonymous.events[0]["CallerIDName"]) == (
        "anonymous",
        "Anonymous",
    )
    internal = scenarios.internal("101", "102")
    assert [(e["Context"], e["CallerIDNum"]) for e in internal.events[:1]] == [
        ("from-internal", "101")
    ]
    assert internal.ringing == ("102",)
    outbound = scenarios.outbound("101", "18005551234")
    root, trunk = outbound.events[0], outbound.events[1]
    assert (root["Context"], root["Exten"]) == ("from-internal", "18005551234")
    assert trunk["Channel"].startswith("PJSIP/carrier-") and trunk["Uniqueid"] != trunk["Linkedid"]
