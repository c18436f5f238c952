"""Recording links in the journal: written without one, linked just before sending.

The sender's grace, with the real outbox and the fake Kommo over real sockets: a call whose
file is there goes at once with its link; one whose file appears a moment after the hangup
waits (its record already on disk) and goes with its link; one without a file goes without
one when the grace is over. Replay: the Asterisk 22 recordings' calls, with files laid out
as FreePBX does, get exactly the right link (fetching it over TLS gives that call's bytes);
calls without a file get none.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from recordings_site import Clock, lay_out, self_signed, tls_site

from kommo_callerid.core.config import (
    CacheConfig,
    Config,
    JournalConfig,
    KommoConfig,
    NotifyConfig,
)
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.core.models import CallDirection, CallStatus, FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.daemon.recordings import Recordings
from kommo_callerid.journal.entry import build_entry
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import JournalSender
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal
from kommo_callerid.recordings.keys import KEY_FILE
from kommo_callerid.recordings.token import Claim, verify
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import events_only, read_recording

from support import RECORDINGS, ManualClock, finished_call, make_config, wait_for

BASE = "https://pbx.example.com:8443"
JOHN = "+18305803077"
STARTED = 1_780_000_000.0


def recordings_config(fake: FakeKommo, tmp: Path, monitor: Path, **extra: Any) -> Config:
    return from_mapping(
        {
            "ami": {"secret": "x"},
            "kommo": {
                "base_url": fake.base_url,
                "access_token": fake.token,
                "token_file": str(tmp / "state" / "tokens.json"),
            },
            "recordings": {"directory": str(monitor), **extra},
        }
    )


def claim_of(link: str, key: bytes) -> Claim:
    claim = verify(key, link.removeprefix(f"{BASE}/recordings/"), 0.0)
    assert isinstance(claim, Claim), link
    return claim


async def test_a_record_waits_for_its_file_through_the_grace_never_longer(
    tmp_path: Path,
) -> None:
    monitor = tmp_path / "monitor"
    when = datetime.fromtimestamp(STARTED)
    lay_out(monitor, "1.1", when, b"first")
    clock = ManualClock()
    clock.now = STARTED + 100

    async def tick(_: float) -> None:  # real time passes; the clock moves only by the test
        await asyncio.sleep(0.01)

    async with FakeKommo(demo_dataset()) as fake:
        config = recordings_config(fake, tmp_path, monitor)
        recordings = Recordings(config, base_url=BASE, clock=clock, grace=10.0)
        key = (tmp_path / "state" / KEY_FILE).read_bytes().strip()
        kommo_config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(fake.token))
        async with KommoClient(kommo_config, CacheConfig()) as kommo:
            outbox = AsyncOutbox(tmp_path / "j.db")
            await outbox.open()
            api = KommoJournal(kommo.transport, timeout=5.0, rate_limit=100.0)
            journal = JournalConfig(
                database=tmp_path / "j.db", recording_url="https://old.example/{linkedid}.wav"
            )
            sender = JournalSender(
                outbox, api, journal, NotifyConfig(), clock=clock, sleep=tick, links=recordings
            )
            sender.start()
            try:
                for linkedid in ("1.1", "1.2", "1.3"):
                    sender.record(finished_call(linkedid, JOHN, started_at=STARTED))
                await wait_for(lambda: len(fake.journal.calls) >= 1)
                await asyncio.sleep(0.3)
                sent = {call.uniq: call.body for call in fake.journal.calls}
                assert sorted(sent) == ["1.1"]  # 1.2 and 1.3 wait, written already
                assert claim_of(sent["1.1"]["link"], key).uniqueid == "1.1"
                assert outbox.pending == 2

                clock.advance(5.0)
                lay_out(monitor, "1.2", when, b"second")  # MIXMON_POST made it, late
                await asyncio.sleep(0.3)
                assert len(fake.journal.calls) == 1  # still within the grace

                clock.advance(5.5)  # the grace is over: both go, 1.3 without a link
                await wait_for(lambda: len(fake.journal.calls) >= 3)
                sent = {call.uniq: call.body for call in fake.journal.calls}
                assert claim_of(sent["1.2"]["link"], key).uniqueid == "1.2"
                assert "link" not in sent["1.3"]  # the directory's link replaces the template
            finally:
                await sender.close(2.0)
    listed = {e.call_id: e.link for e in (await _listing(tmp_path / "j.db"))}
    assert listed["1.1"].startswith(f"{BASE}/recordings/") and listed["1.3"] == ""
    assert listed["1.2"].startswith(f"{BASE}/recordings/")


async def _listing(database: Path) -> list[Any]:
    outbox = AsyncOutbox(database)
    await outbox.open()
    try:
        return await outbox._call(lambda box: box.listing())  # what `journal --json` reads
    finally:
        await outbox.close()


SETS = {
    "inbound_contexts": ["from-trunk", "from-pstn", "from-external", "from-did-direct"],
    "outbound_contexts": ["from-internal"],
}


class Collect:
    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call)


async def replayed_calls(ami: FakeAmiServer) -> list[FinishedCall]:
    """The Asterisk 22 recordings' finished calls, through the real daemon."""
    played = sorted(
        p for p in (RECORDINGS / "asterisk-22").glob("*.txt") if not p.name.endswith(".actions.txt")
    )
    sink = Collect()
    expected = sum(
        len(json.loads(p.with_name(p.name.removesuffix(".txt") + ".journal.json").read_text()))
        for p in played
    )
    async with FakeKommo(demo_dataset()) as kommo:
        daemon = Daemon(make_config(ami, kommo, calls=SETS), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.ami_connected or serving.done())
            for recording in played:
                await ami.play(events_only(read_recording(recording)))
            await wait_for(lambda: len(sink.calls) >= expected, 10)
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK
    return sink.calls


async def test_replayed_calls_get_exactly_their_recording_link(
    ami: FakeAmiServer, tmp_path: Path
) -> None:
    calls = await replayed_calls(ami)
    assert len({c.call_id for c in calls}) == len(calls) >= 10
    monitor = tmp_path / "monitor"
    with_file: dict[str, bytes] = {}
    for n, call in enumerate(calls):
        if call.status is not CallStatus.ANSWERED or n % 4 == 3:
            continue  # unanswered calls have no recording; so does every fourth answered one
        data = f"recording of {call.call_id}".encode() * 100
        when = datetime.fromtimestamp(call.started_at)
        inbound = call.direction is CallDirection.INBOUND
        lay_out(
            monitor,
            call.uniqueid,
            when,
            data,
            kind="in" if inbound else "out",
            to=call.did or call.phone,
            caller=call.phone if inbound else call.extension or "",
        )
        with_file[call.call_id] = data
    assert 3 <= len(with_file) < len(calls)

    async with FakeKommo(demo_dataset()) as fake:
        config = recordings_config(fake, tmp_path, monitor)
    clock = Clock(max(c.started_at + c.duration for c in calls) + 3600)
    recordings = Recordings(config, base_url=BASE, clock=clock, grace=10.0)
    entries = [
        build_entry(c, JournalConfig(), NotifyConfig(), c.started_at + c.duration) for c in calls
    ]
    ready, later = await recordings.settle([e for e in entries if e is not None])
    assert later == []
    links = {entry.call_id: entry.link for entry in ready}
    assert {cid for cid, link in links.items() if link} == set(with_file)

    key = (tmp_path / "state" / KEY_FILE).read_bytes().strip()
    certs = self_signed(tmp_path)
    with tls_site(config.recordings, key, certs, clock) as site:
        for call_id, data in with_file.items():
            path = links[call_id].removeprefix(BASE)
            status, headers, body = site.request("GET", path)
            assert (status, body) == (200, data), call_id
            assert headers["content-type"] == "audio/wav"
