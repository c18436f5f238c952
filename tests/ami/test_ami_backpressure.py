"""Backpressure from the intake to the AMI reader (issue 22): a ``read=all`` stream faster
than the intake stalls the reader while the backlog is transient, and loses nothing; a
sustained one still sheds and counts after at most MAX_STALL, and the link stays up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.ami import pacing
from kommo_callerid.ami.client import AmiClient
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.recording import format_message

EventQueue = asyncio.Queue[ChannelEvent]
QUEUE = 100  # the intake's queue: stall at 50 waiting, read again below 25
BURST = 1_000  # events in one write: ten queues' worth


def burst(count: int = BURST) -> bytes:
    return b"".join(
        format_message({
            "Event": "Hangup",
            "Channel": f"PJSIP/100-{n:08x}",
            "Uniqueid": f"1.{n}",
            "Linkedid": "1.0",
            "Cause": "16",
        })
        for n in range(count)
    )  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer() as fake:
        yield fake


@pytest.fixture
def queue() -> EventQueue:
    return asyncio.Queue(maxsize=QUEUE)


async def connect(server: FakeAmiServer, queue: EventQueue) -> AmiClient:
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
    return ami


async def slow_intake(queue: EventQueue, taken: list[str], per_turn: int) -> None:
    """An intake slower than the reader: ``per_turn`` events a loop turn."""
    while True:
        taken.append((await queue.get()).uniqueid)
        for _ in range(per_turn - 1):
            if queue.empty():
                break
            taken.append(queue.get_nowait().uniqueid)
        await asyncio.sleep(0)


async def test_a_transient_backlog_stalls_the_reader_and_loses_nothing(
    server: FakeAmiServer, queue: EventQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stall may last long here: the test is about counts, not about this machine's speed.
    monkeypatch.setattr(pacing, "MAX_STALL", 30.0)
    ami = await connect(server, queue)
    taken: list[str] = []
    intake = asyncio.create_task(slow_intake(queue, taken, per_turn=10))
    try:
        server.emit_raw(burst())
        await ami.send_action({"Action": "Ping"}, timeout=20.0)  # answered after the burst
        async with asyncio.timeout(20):
            while not queue.empty():  # noqa: ASYNC110 - the intake task takes them
                await asyncio.sleep(0.01)
    finally:
        intake.cancel()
    # before: the reader put what the queue held and shed the rest (900 of 1,000 here)
    assert (len(taken), ami.counters.dropped) == (BURST, 0)
    assert taken == [f"1.{n}" for n in range(BURST)]  # in order
    assert ami.counters.delivered == BURST
    assert ami._pacer is not None and ami._pacer.stalls > 0 and ami._pacer.overruns == 0
    assert ami.connected
    await ami.close()


async def test_a_sustained_flood_is_shed_and_counted_after_a_bounded_stall(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    ami = await connect(server, queue)  # nobody takes from the queue: the intake is stuck
    with capture_logs() as logs:
        server.emit_raw(burst())
        await ami.send_action({"Action": "Ping"}, timeout=5.0)  # answered after the burst
    counters = ami.counters
    assert (counters.received, counters.delivered) == (BURST, QUEUE)
    assert counters.dropped == BURST - QUEUE
    assert [log["event"] for log in logs] == ["ami.events_dropped"]
    assert ami._pacer is not None and ami._pacer.stalls == 1 and ami._pacer.overruns == 1
    assert ami.connected
    await ami.close()


async def test_after_an_overrun_the_reader_stalls_again_once_the_queue_drained(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    ami = await connect(server, queue)
    server.emit_raw(burst())
    await ami.send_action({"Action": "Ping"}, timeout=5.0)  # one stall, then shed
    while not queue.empty():
        queue.get_nowait()
    server.emit_raw(burst())  # a new backlog after the drain: a new stall
    await ami.send_action({"Action": "Ping"}, timeout=5.0)
    assert ami._pacer is not None and ami._pacer.stalls == 2
    assert ami.counters.dropped == 2 * (BURST - QUEUE)
    assert ami.connected
    await ami.close()
