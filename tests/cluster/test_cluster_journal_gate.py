"""On a cluster a journal record goes to Kommo only under its daemon's claim: the records a
daemon finds in its outbox when it starts again (after a crash) are sent, wait, or are
dropped by what their claims say."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from cluster_helpers import cluster_config
from redis_server import RedisServer
from structlog.testing import capture_logs

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.journal.entry import build_entry
from kommo_callerid.journal.outbox import Outbox
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeContact, FakeKommo, KommoDataset

from support import events, finished_call, running_daemon, wait_for

#: What each record's claim says when the daemon starts.
FREE, DONE_ELSEWHERE, DONE_HERE, HELD_ELSEWHERE = "1.1", "1.2", "1.3", "1.4"
PHONES = {FREE: "+18305550001", DONE_ELSEWHERE: "+18305550002"}
PHONES |= {DONE_HERE: "+18305550003", HELD_ELSEWHERE: "+18305550004"}


def _outbox_with_records(database: Path) -> None:
    entries = []
    for call_id, phone in PHONES.items():
        entry = build_entry(
            finished_call(call_id, phone), JournalConfig(), NotifyConfig(), time.time()
        )
        assert entry is not None
        entries.append(entry)
    outbox = Outbox.open(database)
    assert len(outbox.insert(entries)[0]) == len(entries)
    outbox.close()


async def test_records_left_in_the_outbox_go_by_their_claims(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    database = tmp_path / "journal.sqlite3"
    _outbox_with_records(database)
    client = redis_server.client()
    try:
        claim = "kommo-callerid:claim:journal:{}".format
        await client.set(claim(DONE_ELSEWHERE), "done:other:1f", px=60_000)
        await client.set(claim(DONE_HERE), "done:gate:2f", px=60_000)  # then `journal retry`
        await client.set(claim(HELD_ELSEWHERE), "other:3f", px=1_500)  # its owner dies
    finally:
        await client.aclose()
    known = KommoDataset(
        contacts=tuple(
            FakeContact(7000 + n, f"Caller {n}", (phone,), 7, 1_700_000_000)
            for n, phone in enumerate(PHONES.values())
        )
    )
    async with FakeKommo(known) as kommo:
        config = cluster_config(
            ami, kommo, redis_server.url, "gate", journal={"database": str(database)}
        )
        with capture_logs() as logs:
            async with running_daemon(config):
                await wait_for(lambda: len(kommo.journal.calls) >= 3, timeout=30)
                await asyncio.sleep(0.5)  # nothing more arrives
    sent = {call.uniq: call.order for call in kommo.journal.calls}
    assert Counter(kommo.journal.uniqs()) == {FREE: 1, DONE_HERE: 1, HELD_ELSEWHERE: 1}
    assert sent[HELD_ELSEWHERE] > sent[FREE]  # held back until its owner's claim lapsed
    [dropped] = events(logs, "journal.dropped")
    assert dropped["call_id"] == DONE_ELSEWHERE
    assert "journaled by another daemon of the cluster (other)" in dropped["detail"]
