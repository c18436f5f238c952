"""The AMI reader over real sockets: garbage, oversized input, encodings, reads split anywhere."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.protocol import MAX_MESSAGE_BYTES
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.recording import format_message

EventQueue = asyncio.Queue[ChannelEvent]

NAME = "Jürgen Straße 東京"  # two-byte and three-byte UTF-8 sequences


def newchannel(uniqueid: str, name: str = NAME, **extra: str) -> dict[str, str]:
    """A Newchannel as Asterisk 22 sends it (tests/data/ami-recordings)."""
    return {
        "Event": "Newchannel",
        "Privilege": "call,all",
        "Channel": "PJSIP/carrier-00000001",
        "ChannelState": "4",
        "ChannelStateDesc": "Ring",
        "CallerIDNum": "18305803077",
        "CallerIDName": name,
        "ConnectedLineNum": "<unknown>",
        "ConnectedLineName": "<unknown>",
        "Language": "en",
        "AccountCode": "",
        "Context": "from-trunk",
        "Exten": "5551000",
        "Priority": "1",
        "Uniqueid": uniqueid,
        "Linkedid": uniqueid,
        **extra,
    }


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer() as fake:
        yield fake


@pytest.fixture
def queue() -> EventQueue:
    return asyncio.Queue(maxsize=10_000)


@pytest.fixture
async def client(server: FakeAmiServer, queue: EventQueue) -> AsyncIterator[AmiClient]:
    config = AmiConfig(
        host="127.0.0.1",
        port=server.port,
        username=DEMO_USERNAME,
        secret=SecretStr(DEMO_SECRET),
        connect_timeout=2.0,
    )
    ami = AmiClient(config, queue)
    await ami.connect()
    await server.wait_logged_in()
    await barrier(ami)  # the FullyBooted after the login is read too
    yield ami
    await ami.close()


async def barrier(client: AmiClient) -> None:
    """Everything the server sent before has been read: it answers in order."""
    await client.send_action({"Action": "Ping"}, timeout=5.0)


def drain(queue: EventQueue) -> list[ChannelEvent]:
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


def reader(client: AmiClient) -> Any:
    """The client's protocol object (panoramisk's, untyped)."""
    link = client._link
    assert link is not None
    return link.protocol


class Reads:
    """Counts the client's TCP reads; :meth:`send` returns once the bytes have been read."""

    def __init__(self, client: AmiClient) -> None:
        self.count = 0
        self._received = self._sent = 0
        self._caught_up = asyncio.Event()
        protocol = reader(client)
        original = protocol.data_received

        def counting(data: bytes) -> None:
            self.count += 1
            self._received += len(data)
            if self._received >= self._sent:
                self._caught_up.set()
            original(data)

        protocol.data_received = counting  # the transport looks it up on every read

    async def send(self, server: FakeAmiServer, data: bytes) -> None:
        """Write ``data`` and wait until it is read: the next write cannot share a read."""
        self._caught_up.clear()
        assert server.emit_raw(data) == 1
        self._sent += len(data)
        if self._received < self._sent:
            await asyncio.wait_for(self._caught_up.wait(), 2.0)


# ---- garbage and oversized input ----


async def test_garbage_is_counted_and_the_next_event_arrives(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    junk = random.Random(20240601).randbytes(4096)  # NULs, lone CRs, invalid UTF-8, anything
    assert b"\r\n\r\n" not in junk and b"\x00" in junk and b"\r" in junk
    server.emit_raw(
        junk + b"\r\n\r\n"
        + b"\x00\x00\x00\x00\r\n\r\n"
        + b"no colon here\r\nnor\rhere\r\n\r\n"
        + b"\rlone\rcarriage\rreturns\r\r\n\r\n"
        + b"Key: value, but neither Event nor Response\r\n\r\n"
        + b"\r\n\r\n"  # empty: not even garbage
        + format_message(newchannel("1.1"))
        + b"\x00\xff junk before the headers\r\nno colon\r\n"  # same message as the event below
        + format_message(newchannel("1.2"))
    )  # fmt: skip
    await barrier(client)
    events = drain(queue)
    assert [(e.kind, e.uniqueid, e.caller_name) for e in events] == [
        (ChannelEventKind.NEWCHANNEL, "1.1", NAME),
        (ChannelEventKind.NEWCHANNEL, "1.2", NAME),
    ]
    assert events[0].caller_num == "18305803077"
    assert (events[0].context, events[0].exten) == ("from-trunk", "5551000")
    counters = client.counters
    assert (counters.garbage, counters.invalid, counters.oversized) == (5, 0, 0)
    assert client.connected


@pytest.mark.parametrize(
    "blob",
    [b"A" * (10 << 20), b"X-Junk: no blank line in here\r\n" * ((10 << 20) // 31)],
    ids=["one 10 MB line", "10 MB of lines"],
)
async def test_an_oversized_message_is_skipped_to_the_next_blank_line(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue, blob: bytes
) -> None:
    server.emit_raw(format_message(newchannel("2.1")) + blob)
    server.emit_raw(b"\r\n" if blob.endswith(b"\r\n") else b"\r\n\r\n")
    server.emit_raw(format_message(newchannel("2.2")))
    await barrier(client)
    assert [e.uniqueid for e in drain(queue)] == ["2.1", "2.2"]
    assert reader(client).max_buffered <= MAX_MESSAGE_BYTES  # never more, whatever came in
    counters = client.counters
    assert (counters.oversized, counters.garbage, counters.invalid) == (1, 0, 0)
    assert client.connected


async def test_a_message_of_the_maximum_size_passes_and_one_byte_more_is_skipped(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    def padded(uniqueid: str, size: int) -> bytes:
        unpadded = len(format_message(newchannel(uniqueid, Padding="")))
        data = format_message(newchannel(uniqueid, Padding="p" * (size - unpadded)))
        assert len(data) == size
        return data

    reads = Reads(client)
    # The big message starts a read, or follows another message in the same read.
    for before in (b"", format_message(newchannel("3.0"))):
        await reads.send(server, before + padded("3.1", MAX_MESSAGE_BYTES) + padded("3.2", 500))
        await reads.send(server, before + padded("3.3", MAX_MESSAGE_BYTES + 1) + padded("3.4", 500))
    await barrier(client)
    expected = ["3.1", "3.2", "3.4", "3.0", "3.1", "3.2", "3.0", "3.4"]
    assert [e.uniqueid for e in drain(queue)] == expected
    assert (client.counters.oversized, client.counters.garbage) == (2, 0)


# ---- encodings ----


async def test_a_latin1_name_arrives_as_latin1_and_utf8_names_intact(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    def latin1(uniqueid: str) -> bytes:
        return format_message(newchannel(uniqueid, "@")).replace(b"@", b"Jos\xe9 Nu\xf1ez")

    reads = Reads(client)
    # In one read, each message decoded on its own: UTF-8 next to Latin-1 stays UTF-8.
    await reads.send(server, latin1("4.1") + format_message(newchannel("4.2")) + latin1("4.3"))
    # Within one message, line by line: a Latin-1 Channel next to a UTF-8 CallerIDName.
    mixed = format_message(newchannel("4.6", Channel="SIP/@"))
    await reads.send(server, mixed.replace(b"@", b"Jos\xe9"))
    # Latin-1 cut right after the é, UTF-8 cut inside the 東.
    data = latin1("4.4")
    cut = data.index(b"\xe9") + 1
    await reads.send(server, data[:cut])
    await reads.send(server, data[cut:])
    data = format_message(newchannel("4.5"))
    cut = data.index("東".encode()) + 2
    await reads.send(server, data[:cut])
    await reads.send(server, data[cut:])
    await barrier(client)
    events = drain(queue)
    assert events[3].channel == "SIP/José"
    assert [(e.uniqueid, e.caller_name) for e in events] == [
        ("4.1", "José Nuñez"),
        ("4.2", NAME),
        ("4.3", "José Nuñez"),
        ("4.6", NAME),
        ("4.4", "José Nuñez"),
        ("4.5", NAME),
    ]
    assert client.counters.garbage == client.counters.invalid == 0


# ---- reads split anywhere ----


async def test_an_event_sent_one_byte_per_write_arrives_intact(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    data = format_message(newchannel("5.1"))
    reads = Reads(client)
    for i in range(len(data)):
        await reads.send(server, data[i : i + 1])
    assert reads.count == len(data)  # one read per byte: every boundary was a read boundary
    await barrier(client)
    [event] = drain(queue)
    assert (event.uniqueid, event.caller_name, event.exten) == ("5.1", NAME, "5551000")


@pytest.mark.parametrize(("name", "encoding"), [(NAME, "utf-8"), ("José Nuñez", "latin-1")])
async def test_an_event_cut_in_two_at_every_position_arrives_intact(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue, name: str, encoding: str
) -> None:
    def event(uniqueid: str) -> bytes:
        return format_message(newchannel(uniqueid, "@")).replace(b"@", name.encode(encoding))

    size = len(event("6.0000"))
    reads = Reads(client)
    for i in range(1, size):
        data = event(f"6.{i:04d}")  # same length for every i
        await reads.send(server, data[:i])
        await reads.send(server, data[i:])
    assert reads.count == 2 * (size - 1)
    await barrier(client)
    events = drain(queue)
    assert [e.uniqueid for e in events] == [f"6.{i:04d}" for i in range(1, size)]
    assert {(e.caller_name, e.caller_num, e.context) for e in events} == {
        (name, "18305803077", "from-trunk")
    }
    assert client.counters.garbage == client.counters.invalid == 0


# ---- unused events are dropped unparsed ----


async def test_events_the_daemon_does_not_use_are_counted_and_never_parsed(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    protocol = reader(client)
    original = protocol._parse
    monkeypatch.setattr(protocol, "_parse", lambda raw: (parsed.append(bytes(raw)), original(raw)))
    ignored_before = client.counters.ignored  # FullyBooted after the login
    noise = [{"Event": name, "Privilege": "dialplan,all"} for name in ("VarSet", "Newexten")]
    server.emit_raw(
        b"".join(format_message(event) for event in noise)
        + b"\r\nEvent: HangupRequest\r\nUniqueid: 1.1\r\n\r\n"  # after a stray CRLF
        + b"X-Before: the Event line\r\nEvent: Cdr\r\n\r\n"  # not the first line
        + format_message(newchannel("4.1"))
    )
    await barrier(client)
    assert [e.uniqueid for e in drain(queue)] == ["4.1"]
    assert client.counters.ignored - ignored_before == 4
    assert all(b"Response: Success" in raw for raw in parsed)  # only the Ping's answer
    assert client.counters.garbage == client.counters.invalid == 0


async def test_an_unused_event_carrying_a_pending_actions_id_still_reaches_panoramisk(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.hang()  # the server will not answer: an event with the Ping's ActionID will
    ping = asyncio.ensure_future(client.send_action({"Action": "Ping"}, timeout=5.0))
    await asyncio.sleep(0.01)
    protocol = reader(client)
    [action_id] = protocol.responses
    protocol.data_received(format_message({"Event": "PingAnswer", "ActionID": action_id}))
    answer = await ping
    assert answer["Event"] == "PingAnswer"
    assert client.counters.ignored == 1  # the FullyBooted after the login only
