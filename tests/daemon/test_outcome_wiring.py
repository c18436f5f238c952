"""The daemon feeds every AMI event to the outcome tracker and hands each finished call to
its journal sink (real sockets: fake AMI server -> daemon)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from structlog.testing import capture_logs

from kommo_callerid.core.models import CallDirection, CallStatus, FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import events_only, read_recording
from kommo_callerid.sim.scenarios import CallScenarios

from support import RECORDINGS, make_config, wait_for

QUEUE_CALL = RECORDINGS / "asterisk-22" / "07-inbound-queue-5552000.txt"


class CollectingSink:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[FinishedCall] = []
        self.fail = fail

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call)
        if self.fail:
            raise RuntimeError("a broken sink")


@asynccontextmanager
async def daemon_with(sink: CollectingSink) -> AsyncIterator[tuple[Daemon, FakeAmiServer]]:
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        daemon = Daemon(make_config(ami, kommo), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.ami_connected or serving.done())
            yield daemon, ami
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK


async def test_each_finished_call_reaches_the_journal_sink_once() -> None:
    sink = CollectingSink()
    async with daemon_with(sink) as (daemon, ami):
        await ami.play(events_only(read_recording(QUEUE_CALL)))
        await wait_for(lambda: len(sink.calls) == 1)
        await wait_for(lambda: daemon.table_sizes()["outcomes"] == 0)
    (call,) = sink.calls
    assert (call.call_id, call.direction, call.status) == (
        "1795552762.29",
        CallDirection.INBOUND,
        CallStatus.ANSWERED,
    )
    assert (call.answered_by, call.phone, call.did) == ("100", "18305803077", "5552000")
    assert abs(call.started_at - time.time()) < 10  # loop time made Unix time


async def test_a_failing_sink_is_logged_and_intake_goes_on() -> None:
    sink = CollectingSink(fail=True)
    with capture_logs() as logs:
        async with daemon_with(sink) as (_, ami):
            await ami.play(events_only(read_recording(QUEUE_CALL)))
            await wait_for(lambda: len(sink.calls) == 1)
            await ami.play(
                events_only(
                    read_recording(RECORDINGS / "asterisk-22" / "05-inbound-noanswer-5551001.txt")
                )
            )
            await wait_for(lambda: len(sink.calls) == 2)
    failed = [line for line in logs if line["event"] == "journal.record_failed"]
    assert [line["call_id"] for line in failed] == [c.call_id for c in sink.calls]


async def test_synthetic_calls_say_who_answered() -> None:
    scenarios = CallScenarios()
    calls = [
        scenarios.inbound(agents=("100", "101"), answered_by="101"),
        scenarios.inbound("18305550000", agents=("102",), via_local=False),
        scenarios.inbound("18305550001", agents=("100", "101"), answered_by=None),
    ]
    sink = CollectingSink()
    async with daemon_with(sink) as (_, ami):
        for call in calls:
            await ami.play(call.all_events)
        await wait_for(lambda: len(sink.calls) == 3)
    assert [(c.call_id, c.answered_by, c.status) for c in sink.calls] == [
        (calls[0].linkedid, "101", CallStatus.ANSWERED),
        (calls[1].linkedid, "102", CallStatus.ANSWERED),
        (calls[2].linkedid, None, CallStatus.NO_ANSWER),
    ]
