"""The journal's writer, a group commit (issue 22): a lone call is written at once, calls that
end close together share one transaction, and a stop does not wait for the gap."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.journal.entry import JournalEntry, build_entry
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.writer import OutboxWriter

from support import finished_call, on_disk, wait_for

JOHN = "+18305803077"


def record(linkedid: str) -> JournalEntry:
    entry = build_entry(finished_call(linkedid, JOHN), JournalConfig(), NotifyConfig(), now=1e9)
    assert entry is not None
    return entry


async def started_writer(database: Path, gap: float, writes: list[int]) -> OutboxWriter:
    """A writer on a fresh outbox; ``writes`` gets each transaction's record count."""

    def written(entries: list[JournalEntry], _refused: list[str]) -> None:
        if entries:  # the outbox just opened: nothing written
            writes.append(len(entries))

    writer = OutboxWriter(AsyncOutbox(database), written, gap=gap)
    await writer.open()
    writer.start()
    return writer


async def test_a_lone_call_is_written_at_once_and_a_burst_shares_a_write(tmp_path: Path) -> None:
    """One call: on disk at once, not after the gap. Five calls 20 ms apart right after it:
    one transaction (before: five, each its own fsync and trip to the database thread)."""
    writes: list[int] = []
    writer = await started_writer(tmp_path / "j.db", 1.0, writes)
    began = time.monotonic()
    writer.offer(record("8.0"))
    await wait_for(lambda: writes == [1])
    alone = time.monotonic() - began
    for n in range(1, 6):
        writer.offer(record(f"8.{n}"))
        await asyncio.sleep(0.02)
    await wait_for(lambda: sum(writes) == 6)
    assert await writer.stop(1.0) == 0
    await writer.outbox.close()
    assert writes == [1, 5]
    assert alone < 0.9, f"a lone call waited {alone:.2f} s for a gap of 1 s"
    assert on_disk(writer.outbox)["pending"] == 6


async def test_a_stop_writes_what_waits_for_the_gap_at_once(tmp_path: Path) -> None:
    writes: list[int] = []
    writer = await started_writer(tmp_path / "j.db", 60.0, writes)
    writer.offer(record("9.0"))
    await wait_for(lambda: writes == [1])
    writer.offer(record("9.1"))  # held: the last write was a moment ago
    await asyncio.sleep(0.05)
    assert writer.unwritten == 1
    began = time.monotonic()
    assert await writer.stop(5.0) == 0
    await writer.outbox.close()
    assert time.monotonic() - began < 5.0 and writes == [1, 1]
