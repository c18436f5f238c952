"""Issue 18, "lose nothing": in processes of their own, a call that ended is on disk while
Kommo keeps a journal request waiting; a stop that cannot write says how many calls it lost;
a second daemon on the same outbox is refused."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from kommo_callerid.journal.writer import WRITE_GAP
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeContact, FakeKommo, KommoDataset, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall
from process_support import DaemonProcess, process_config

from support import wait_for


def known_callers(count: int) -> tuple[list[SyntheticCall], KommoDataset]:
    calls = CallScenarios().inbound_calls(count)
    contacts = tuple(
        FakeContact(6000 + n, f"Caller {n}", (call.caller_num,), 7, 1_700_000_000)
        for n, call in enumerate(calls)
    )
    return list(calls), KommoDataset(contacts=contacts)


def unsent_on_disk(database: Path) -> int:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT count(*) FROM records WHERE state = 'pending'").fetchone()
    return int(row[0])


def accounted(health: dict[str, Any]) -> int:
    """Calls the daemon holds: on disk, and (``journal_unwritten``) in memory only."""
    return int(health["journal_pending"]) + int(health.get("journal_unwritten") or 0)


async def test_sigkill_at_random_points_of_a_503_storm_loses_no_call(
    tmp_path: Path, ami: FakeAmiServer
) -> None:
    """Kommo answers 503 on every endpoint; 20 calls end over three runs of the daemon, each
    killed at a random moment once /healthz counts its calls; the next start delivers all 20,
    each once (before the writer had its own task: 1 of 20)."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    database = tmp_path / "journal.sqlite3"
    calls, dataset = known_callers(20)
    async with FakeKommo(dataset) as kommo:
        config = process_config(tmp_path, ami, kommo, database)
        kommo.outage(503, 3600.0)
        played = 0
        for run, count in enumerate((7, 7, 6)):
            before = unsent_on_disk(database) if database.exists() else 0
            daemon = await DaemonProcess(config, tmp_path / f"run-{run}.log").start()
            try:
                await ami.wait_logged_in(run + 1, timeout=20)
                await daemon.wait_health(lambda h: h["ami"] == "connected")
                for call in calls[played : played + count]:
                    await ami.play(call.events + call.hangups)
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                played += count
                await daemon.wait_health(lambda h, n=before + count: accounted(h) == n, 20)
                # The promise is "on disk within a second of the call's end": the writer may
                # hold a call up to WRITE_GAP to share a transaction (a group commit).
                await asyncio.sleep(rng.uniform(WRITE_GAP + 0.05, 1.0))
            finally:
                assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL, f"seed {seed}"
        on_disk = unsent_on_disk(database)
        assert on_disk == 20, f"seed {seed}: {on_disk} of 20 calls on disk"
        assert kommo.journal.calls == []

        kommo.outage(503, 0.0)  # Kommo is back
        last = await DaemonProcess(config, tmp_path / "last.log").start()
        try:
            await wait_for(lambda: len(kommo.journal.calls) >= 20, 30)
        finally:
            assert await last.stop() == 0
    delivered = Counter(kommo.journal.uniqs())
    assert sorted(delivered) == sorted(call.linkedid for call in calls)
    assert set(delivered.values()) == {1}


async def test_a_stop_while_another_process_holds_the_database_says_what_it_lost(
    tmp_path: Path, ami: FakeAmiServer
) -> None:
    """Another process holds SQLite's write lock; 5 calls end; SIGTERM. The stop waits (within
    shutdown_timeout), then says at error level that 5 calls could not be written, and
    ``daemon.stopped`` does not call them pending (before: no line, ``journal_pending`` 0)."""
    database = tmp_path / "journal.sqlite3"
    calls, dataset = known_callers(5)
    async with FakeKommo(dataset) as kommo:
        config = process_config(tmp_path, ami, kommo, database)
        daemon = await DaemonProcess(config, tmp_path / "run.log").start()
        blocker: sqlite3.Connection | None = None
        try:
            await daemon.wait_health(lambda h: h["ami"] == "connected")
            blocker = sqlite3.connect(database, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by "another process"
            for call in calls:
                await ami.play(call.events + call.hangups)
            await daemon.wait_health(lambda h: accounted(h) == 5)
            await daemon.wait_health(lambda h: h.get("journal") == "unusable")
            status, body = await daemon.health()
            assert (status, body["journal_unwritten"]) == (503, 5), body
            code = await daemon.stop(signal.SIGTERM, timeout=15)
        finally:
            if blocker is not None:
                blocker.execute("ROLLBACK")
                blocker.close()
            if not daemon.exited:
                await daemon.stop(signal.SIGKILL)
    assert code == 0
    [stopped] = daemon.events("daemon.stopped")
    assert (stopped["journal_pending"], stopped["journal_unwritten"]) == (0, 5)
    lost = [line for line in daemon.events("journal.unusable") if "lost" in line]
    assert len(lost) == 1 and lost[0]["lost"] == 5 and lost[0]["level"] == "error"
    assert "5 finished call(s) could not be written" in lost[0]["detail"]
    assert unsent_on_disk(database) == 0  # what the line says is lost is not on disk


async def test_a_second_daemon_on_the_same_outbox_exits_3_with_a_sentence(
    tmp_path: Path, ami: FakeAmiServer
) -> None:
    """Two daemons on one outbox sent every retried record twice; the second now stops at
    start-up (exit 3), naming the file, and the first goes on."""
    database = tmp_path / "journal.sqlite3"
    async with FakeKommo(demo_dataset()) as kommo:
        config = process_config(tmp_path, ami, kommo, database)
        first = await DaemonProcess(config, tmp_path / "first.log").start()
        try:
            await first.wait_health(
                lambda h: h.get("journal", "ok") == "ok" and h["ami"] == "connected"
            )
            second = await DaemonProcess(config, tmp_path / "second.log").start()
            try:
                code = await second.wait_exit(20)
            finally:
                if not second.exited:
                    await second.stop(signal.SIGKILL)
            status, body = await first.health()
        finally:
            assert await first.stop() == 0
    assert code == 3, second.log.read_text()
    [refused] = second.events("journal.unusable")
    assert str(database) in refused["detail"] and "another kommo-callerid" in refused["detail"]
    assert (status, body["journal"]) == (200, "ok")
    assert ami.logins == 1  # the second never reached the AMI
