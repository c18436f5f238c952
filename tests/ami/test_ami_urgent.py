"""A call's first channel is handed over before the rest of its TCP read is parsed (issue 22):
the intake and the task it starts run first; order is kept and nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.protocol import URGENT_READ_BYTES
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.recording import format_message

EventQueue = asyncio.Queue[ChannelEvent]
LEGS = 50  # events behind the call's first channel in the same write (some 7 KiB)


def newchannel(uniqueid: str, linkedid: str) -> dict[str, str]:
    return {
        "Event": "Newchannel",
        "Channel": f"PJSIP/carrier-{uniqueid}",
        "CallerIDNum": "18305803077",
        "Context": "from-trunk",
        "Exten": "5551000",
        "Uniqueid": uniqueid,
        "Linkedid": linkedid,
    }


def call_bytes(call: int, legs: int = LEGS) -> bytes:
    """A call's root channel and ``legs`` leg channels, as one write."""
    root = f"{call}.0"
    events = [newchannel(root, root)] + [newchannel(f"{call}.{n}", root) for n in range(1, legs)]
    return b"".join(format_message(event) for event in events)


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
    await ami.send_action({"Action": "Ping"}, timeout=5.0)  # the FullyBooted is read too
    while not queue.empty():
        queue.get_nowait()
    yield ami
    await ami.close()


async def take(queue: EventQueue, count: int) -> list[ChannelEvent]:
    async with asyncio.timeout(5):
        return [await queue.get() for _ in range(count)]


async def test_a_new_call_and_the_task_it_starts_run_before_the_rest_of_its_read(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    server.emit_raw(call_bytes(1))
    async with asyncio.timeout(5):  # not wait_for: on 3.11 it awaits in a task of its own
        first = await queue.get()
    behind_at_intake = queue.qsize()
    seen_by_task: list[int] = []

    async def notify() -> None:  # the call's lookup and notification, started by the intake
        seen_by_task.append(queue.qsize())

    await asyncio.create_task(notify())
    assert first.uniqueid == first.linkedid == "1.0"
    # before issue 22's change: the whole read was parsed first (49 and 49 here)
    assert (behind_at_intake, seen_by_task) == (0, [0])
    rest = await take(queue, LEGS - 1)
    assert [event.uniqueid for event in rest] == [f"1.{n}" for n in range(1, LEGS)]
    assert queue.empty()


async def test_reads_behind_held_calls_keep_their_order(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    calls = 5
    for call in range(calls):  # several writes, each with its own urgent root
        server.emit_raw(call_bytes(call, legs=20))
    events = await take(queue, calls * 20)
    assert [e.uniqueid for e in events] == [f"{c}.{n}" for c in range(calls) for n in range(20)]
    assert all(e.kind is ChannelEventKind.NEWCHANNEL for e in events)
    assert client.counters.delivered == calls * 20


async def test_a_link_lost_while_a_read_is_held_delivers_the_read_first(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    calls = 15  # each root holds the rest two loop turns: the end of the stream comes first
    data = b"".join(call_bytes(call, legs=5) for call in range(calls))
    assert len(data) < URGENT_READ_BYTES
    server.emit_raw(data)
    for session in server.sessions:
        session.writer.close()  # the data, then the end of the stream
    await asyncio.wait_for(client.wait_closed(), 5)
    assert queue.qsize() == calls * 5  # all read before the loss was reported


async def test_a_long_backlog_is_not_held(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    backlog = [newchannel(f"9.{n}", "9.0") for n in range(1, 300)]  # legs: not urgent
    server.emit_raw(b"".join(format_message(event) for event in backlog))
    await client.send_action({"Action": "Ping"}, timeout=5.0)  # answered after the backlog
    assert queue.qsize() == len(backlog)
    server.emit_raw(call_bytes(3, legs=10))
    async with asyncio.timeout(5):
        while queue.qsize() <= len(backlog):  # noqa: ASYNC110 - looks at every loop turn
            await asyncio.sleep(0)
    assert queue.qsize() == len(backlog) + 10  # a flood: the read is parsed whole


async def test_a_long_read_is_not_held(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    data = call_bytes(4, legs=400)
    assert len(data) > 2 * URGENT_READ_BYTES  # a backlog behind the call: read whole
    server.emit_raw(data)
    async with asyncio.timeout(5):
        await queue.get()
    await client.send_action({"Action": "Ping"}, timeout=5.0)  # everything before it is read
    assert queue.qsize() == 399
