"""A step of the wall clock (NTP correcting a box that booted behind, ``date -s``): a call's
``created_at`` is the wall clock of the moment, and ``retain`` and the retries count seconds
that passed (monotonic), not the step; the outbox's "every minute" error line repeats on a
monotonic clock too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from structlog.testing import capture_logs

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.journal.clock import SteadyClock
from kommo_callerid.journal.entry import build_entry
from kommo_callerid.journal.outbox import AsyncOutbox, Outbox
from kommo_callerid.journal.writer import OutboxWriter
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.kommo_journal import CALLS_PATH
from kommo_callerid.sim.scenarios import CallScenarios

from support import ManualClock, events, finished_call, make_config, wait_for

YEAR = 365 * 86_400.0
DAY = 86_400.0


class SteppedWall:
    """The real wall clock plus an offset a test steps."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_created_at_is_the_wall_clock_of_the_moment_after_a_step(
    ami: FakeAmiServer,
) -> None:
    """The box starts 3 years behind and NTP corrects it: the next call carries today's date
    (before: the offset taken at start-up, 3 years old, until a restart)."""
    wall = SteppedWall(-3 * YEAR)
    call = CallScenarios().inbound("18305803077")
    async with FakeKommo(demo_dataset()) as kommo:
        daemon = Daemon(make_config(ami, kommo), wall_clock=wall)
        serving = asyncio.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.ami_connected or serving.done())
            wall.offset = 0.0  # corrected
            await ami.play(call.events + call.hangups)
            await wait_for(lambda: len(kommo.journal.calls) == 1, 10)
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK
    created_at = kommo.journal.calls[0].body["created_at"]
    assert abs(created_at - time.time()) < 600


async def test_retain_and_retries_ignore_steps_of_the_wall_clock(ami: FakeAmiServer) -> None:
    """Kommo's journal is down; the wall clock jumps 2 days ahead (retain is 1 day), then 1 day
    back: the record is neither expired by the first step nor stalled by the second (before,
    +2 days dropped every pending record and -1 day stopped their retries for a day)."""
    wall = SteppedWall(0.0)
    async with FakeKommo(demo_dataset()) as kommo:
        kommo.journal.down = True
        daemon = Daemon(make_config(ami, kommo), wall_clock=wall)
        serving = asyncio.create_task(daemon.serve())
        with capture_logs() as logs:
            try:
                await wait_for(lambda: daemon.ami_connected or serving.done())
                daemon.record_finished_call(finished_call("7.1", "+18305803077"))
                await wait_for(lambda: kommo.requests_to(CALLS_PATH) >= 1, 10)
                wall.offset = 2 * DAY
                await wait_for(lambda: kommo.requests_to(CALLS_PATH) >= 2, 15)
                wall.offset = -DAY
                await wait_for(lambda: kommo.requests_to(CALLS_PATH) >= 3, 15)
                kommo.journal.down = False
                await wait_for(lambda: len(kommo.journal.calls) == 1, 20)
            finally:
                daemon.stop.set()
                assert await serving == EXIT_OK
    assert events(logs, "journal.dropped") == []


def test_the_steady_clock_moves_with_monotonic_time_only() -> None:
    wall, monotonic = ManualClock(), ManualClock()
    clock = SteadyClock(wall, monotonic)
    start = clock()
    wall.advance(2 * DAY)
    assert clock() == start
    monotonic.advance(5.0)
    assert clock() == start + 5.0


def test_a_record_written_in_the_future_counts_retain_from_the_restart(tmp_path: Path) -> None:
    """The wall clock was stepped back across a restart: records written "tomorrow" are due
    now and their retain counts from now, not from a time that has not come yet."""
    outbox = Outbox.open(tmp_path / "j.db")
    entry = build_entry(
        finished_call("1.1", "+18305803077"), JournalConfig(), NotifyConfig(), now=2_000.0
    )
    assert entry is not None
    outbox.insert([entry])
    assert outbox.due_now(1_000.0) == 1
    [again] = outbox.due(1_000.0, 10)
    assert (again.recorded_at, again.next_try) == (1_000.0, 1_000.0)
    outbox.close()


async def test_an_unusable_database_is_reported_once_a_minute(tmp_path: Path) -> None:
    clock = ManualClock()
    outbox = AsyncOutbox(tmp_path / "missing" / "j.db")
    writer = OutboxWriter(outbox, lambda written, refused: None, monotonic=clock)
    with capture_logs() as logs:
        await writer.open()
        clock.advance(30.0)
        await writer.open()
        clock.advance(31.0)
        await writer.open()
    await outbox.close()
    lines = events(logs, "journal.unusable")
    assert len(lines) == 2 and {line["log_level"] for line in lines} == {"error"}
    assert not writer.usable and "No such file or directory" in writer.problem
