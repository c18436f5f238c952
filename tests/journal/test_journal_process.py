"""``kommo-callerid run`` in a process of its own: SIGKILL loses no record, and an unusable
database leaves caller ID running while the journal reports it and retries."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.journal.entry import JournalEntry, build_entry
from kommo_callerid.journal.outbox import Outbox
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeContact, FakeKommo, KommoDataset, demo_dataset
from kommo_callerid.sim.kommo_journal import CALLS_PATH
from kommo_callerid.sim.scenarios import CallScenarios
from process_support import DaemonProcess, process_config

from support import finished_call, wait_for

CALLERS = ("18305803077", "14155550199", "12125550142", "442079460958", "16465550123")
#: Root writes read-only files; without these capabilities it cannot.
NO_OVERRIDE = ["--bounding-set", "-dac_override,-dac_read_search"]


def write_config(tmp_path: Path, ami: FakeAmiServer, kommo: FakeKommo, database: Path) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'[ami]\nport = {ami.port}\nusername = "{DEMO_USERNAME}"\nsecret = "{DEMO_SECRET}"\n'
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        f'[log]\nformat = "json"\n[journal]\ndatabase = "{database}"\n'
    )
    return path


async def start(config: Path, *wrapper: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KOMMO_CALLERID_CONFIG", None)
    command = [*wrapper, sys.executable, "-m", "kommo_callerid", "run", "-c", str(config)]
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def restart_until_delivered(config: Path, kommo: FakeKommo, count: int) -> tuple[int, bytes]:
    """Start the daemon again, let it deliver ``count`` calls, SIGTERM it: its exit code and
    stdout."""
    second = await start(config)
    try:
        await wait_for(lambda: len(kommo.journal.calls) >= count, 20)
        await asyncio.sleep(0.5)  # nothing more arrives
    finally:
        second.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(second.communicate(), 10)
    assert second.returncode is not None
    return second.returncode, stdout


def pending_records(count: int) -> list[JournalEntry]:
    entries = []
    for n in range(count):
        call = finished_call(f"1780000000.{n}", "+" + CALLERS[n % len(CALLERS)])
        built = build_entry(call, JournalConfig(), NotifyConfig(), now=time.time())
        assert built is not None
        entries.append(built)
    return entries


async def test_sigkill_with_50_records_pending_then_all_delivered_exactly_once(
    tmp_path: Path, ami: FakeAmiServer
) -> None:
    database = tmp_path / "journal.sqlite3"
    outbox = Outbox.open(database)
    assert len(outbox.insert(pending_records(50))[0]) == 50
    outbox.close()
    async with FakeKommo(demo_dataset()) as kommo:
        config = write_config(tmp_path, ami, kommo, database)
        kommo.journal.down = True
        first = await start(config)
        try:
            await wait_for(lambda: kommo.requests_to(CALLS_PATH) >= 1, 10)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.communicate()
        assert first.returncode == -signal.SIGKILL
        assert kommo.journal.calls == []
        reopened = Outbox.open(database)
        assert reopened.counts() == {"pending": 50, "sent": 0, "dropped": 0}
        reopened.close()

        kommo.journal.down = False
        returncode, stdout = await restart_until_delivered(config, kommo, 50)
    assert returncode == 0
    delivered = Counter(kommo.journal.uniqs())
    assert len(delivered) == 50 and set(delivered.values()) == {1}
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    sent = sum(line["count"] for line in lines if line["event"] == "journal.sent")
    assert sent == 50
    assert Outbox.open(database).counts() == {"pending": 0, "sent": 50, "dropped": 0}


async def test_calls_the_daemon_journaled_survive_its_sigkill(
    tmp_path: Path, ami: FakeAmiServer
) -> None:
    """The records the daemon itself wrote: 50 calls end while Kommo's journal is down."""
    database = tmp_path / "journal.sqlite3"
    calls = CallScenarios().inbound_calls(50)
    known = tuple(
        FakeContact(6000 + n, f"Caller {n}", (call.caller_num,), 7, 1_700_000_000)
        for n, call in enumerate(calls)
    )
    async with FakeKommo(KommoDataset(contacts=known)) as kommo:
        config = write_config(tmp_path, ami, kommo, database)
        kommo.journal.down = True
        first = await start(config)
        try:
            await ami.wait_logged_in(timeout=10)
            for call in calls:
                await ami.play(call.events + call.hangups)
            await wait_for(lambda: unsent(database) == 50, 20)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.communicate()
        kommo.journal.down = False
        returncode, _ = await restart_until_delivered(config, kommo, 50)
    assert returncode == 0
    delivered = Counter(kommo.journal.uniqs())
    assert sorted(delivered) == sorted(call.linkedid for call in calls)
    assert set(delivered.values()) == {1}


def unsent(database: Path) -> int:
    if not database.exists():
        return 0
    outbox = Outbox.open(database)
    try:
        return outbox.counts()["pending"]
    finally:
        outbox.close()


@pytest.mark.parametrize("damage", ["missing-directory", "read-only", "full-disk", "corrupt"])
async def test_an_unusable_database_at_start_leaves_caller_id_running(
    tmp_path: Path, ami: FakeAmiServer, damage: str
) -> None:
    """Before: exit 3, which the unit never restarts, so caller ID stopped for good. Now the
    daemon logs in to the AMI and notifies, /healthz answers 503 with "journal": "unusable",
    a finished call waits in memory, one error line names the file; with the directory made,
    the retry opens the database and the call is written and sent."""
    folder = tmp_path / "db"
    database = folder / "journal.sqlite3"
    wrapper: list[str] = []
    if damage != "missing-directory":
        folder.mkdir()
    if damage == "read-only":
        Outbox.open(database).close()
        database.chmod(0o400)
        folder.chmod(0o500)  # no new -wal file either
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("root without setpriv writes read-only files")
            wrapper = ["setpriv", *NO_OVERRIDE]
    elif damage == "full-disk":
        if shutil.which("prlimit") is None:
            pytest.skip("prlimit (util-linux) simulates the full disk")
        wrapper = ["prlimit", "--fsize=0", "--"]  # every file write fails: EFBIG
    elif damage == "corrupt":
        database.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    call = CallScenarios().inbound("18305803077")
    try:
        async with FakeKommo(demo_dataset()) as kommo:
            config = process_config(tmp_path, ami, kommo, database)
            daemon = await DaemonProcess(config, tmp_path / "run.log", *wrapper).start()
            try:
                await daemon.wait_health(lambda h: h["ami"] == "connected")
                await ami.play(call.events + call.hangups)
                await wait_for(lambda: len(kommo.events) >= 1, 20)  # caller ID works
                body = await daemon.wait_health(lambda h: h["journal_unwritten"] == 1)
                status, body = await daemon.health()
                assert (status, body["journal"]) == (503, "unusable"), body
                if damage == "missing-directory":
                    folder.mkdir()
                    await wait_for(lambda: len(kommo.journal.calls) == 1, 60)
                    status, body = await daemon.health()
                    assert (status, body["journal"], body["journal_unwritten"]) == (200, "ok", 0)
            finally:
                code = await daemon.stop()
    finally:
        if folder.exists():
            folder.chmod(0o700)
    assert code == 0, daemon.log.read_text()
    unusable = daemon.events("journal.unusable")
    assert unusable[0]["level"] == "error"
    assert unusable[0]["detail"].startswith(f"The call journal's database {database} cannot")
    if damage != "missing-directory":
        assert unusable[-1]["lost"] == 1  # the stop says what it could not write
