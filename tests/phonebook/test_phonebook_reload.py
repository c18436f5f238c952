"""SIGHUP reloads ``[phonebook]`` intervals and ``trust_unknown`` without a restart: the sync
keeps the new pace at once (not after the old interval), and unknown numbers follow the new
``trust_unknown``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from kommo_callerid.core.config_load import load_config
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.kommo_data import FakeContact

from support import events, temp_journal, wait_for

NEW = "15550107777"
UNKNOWN = "13125550100"


def config_text(ami: FakeAmiServer, kommo: FakeKommo, database: Path, phonebook: str) -> str:
    return f"""
[ami]
port = {ami.port}
username = "{DEMO_USERNAME}"
secret = "{DEMO_SECRET}"

[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"

[journal]
database = "{temp_journal()}"

[phonebook]
enabled = true
database = "{database}"
{phonebook}
"""


async def test_sighup_changes_the_sync_interval_and_trust_at_once(
    ami: FakeAmiServer, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    database = tmp_path / "pb.sqlite3"
    async with FakeKommo(demo_dataset()) as kommo:
        slow = "sync_interval = 600\nfull_sync_interval = 86400\ntrust_unknown = false"
        path.write_text(config_text(ami, kommo, database, slow))
        daemon = Daemon(load_config(path), config_path=path)
        serving = asyncio.create_task(daemon.serve())
        try:
            # (ready is also true before the daemon runs: no phone book to wait for yet)
            await wait_for(lambda: daemon._running is not None or serving.done(), timeout=10)
            await wait_for(lambda: daemon.phonebook_ready or serving.done(), timeout=15)
            running = daemon._running  # a test looks inside
            assert running is not None and running.front is not None
            front = running.front
            assert front.from_mirror(UNKNOWN) is None  # not trusted: Kommo is asked

            stamp = int(time.time())
            contact = FakeContact(1099, "New Caller", (NEW,), 8320148, stamp, stamp)
            kommo.dataset = replace(kommo.dataset, contacts=(*kommo.dataset.contacts, contact))
            await asyncio.sleep(1.5)
            assert front.from_mirror(NEW) is None  # the next sync is 10 minutes away

            fast = "sync_interval = 1\nfull_sync_interval = 60\ntrust_unknown = true"
            path.write_text(config_text(ami, kommo, database, fast))
            with capture_logs() as logs:
                daemon.reload.set()  # what the SIGHUP handler does
                await wait_for(lambda: bool(events(logs, "config.reloaded")), timeout=5)
                reloaded = time.monotonic()

                def found() -> bool:
                    answer = front.from_mirror(NEW)
                    return answer is not None and answer.entity is not None

                await wait_for(found, timeout=1.0 + 3.0)
            assert time.monotonic() - reloaded <= 4.0
            assert sorted(events(logs, "config.reloaded")[0]["changed"]) == [
                "phonebook.full_sync_interval",
                "phonebook.sync_interval",
                "phonebook.trust_unknown",
            ]
            unknown = front.from_mirror(UNKNOWN)  # trusted now (and the mirror is fresh)
            assert unknown is not None and unknown.entity is None
            assert daemon.config.phonebook.full_sync_interval == 60
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK
