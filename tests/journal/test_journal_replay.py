"""End to end: every recording played through the real daemon (fake AMI server -> outcome
tracker -> journal outbox -> fake Kommo), and the fake's ``POST /api/v4/calls`` compared with
the ``*.journal.json`` expectations beside the recordings (format: the recordings' README).

The fake Kommo knows every expected number (one contact each), so every record attaches;
each extension that answers is a Kommo user in ``[notify.extensions]``, so the record's
``responsible_user_id`` names who answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeContact, FakeKommo, KommoDataset
from kommo_callerid.sim.recording import events_only, read_recording

from support import RECORDINGS, make_config, running_daemon, wait_for

SETS = {
    "asterisk-22": {
        "inbound_contexts": ["from-trunk", "from-pstn", "from-external", "from-did-direct"],
        "outbound_contexts": ["from-internal"],
    },
    "cacofonisk-ast13": {
        "inbound_contexts": ["voipgrid_in"],
        "outbound_contexts": ["osvpi_account"],
    },
}


def recordings(folder: str) -> list[Path]:
    return sorted(
        p for p in (RECORDINGS / folder).glob("*.txt") if not p.name.endswith(".actions.txt")
    )


def expected(recording: Path) -> list[dict[str, Any]]:
    path = recording.with_name(recording.name.removesuffix(".txt") + ".journal.json")
    records: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return records


@pytest.mark.parametrize("folder", sorted(SETS))
async def test_every_recording_reaches_kommo_as_its_journal_json_says(
    ami: FakeAmiServer, folder: str
) -> None:
    played = recordings(folder)
    wanted = {r["call_id"]: r for rec in played for r in expected(rec)}
    phones = sorted({r["phone"] for r in wanted.values()})
    contacts = tuple(
        FakeContact(5000 + n, f"Caller {phone}", (phone,), 7000 + n, 1_700_000_000)
        for n, phone in enumerate(phones)
    )
    extensions = sorted({r["answered_by"] for r in wanted.values() if r["answered_by"]})
    users = {extension: 8000 + n for n, extension in enumerate(extensions)}
    async with FakeKommo(KommoDataset(contacts=contacts)) as kommo:
        config = make_config(ami, kommo, calls=SETS[folder], notify={"extensions": users})
        async with running_daemon(config) as daemon:
            total = 0
            for recording in played:
                await ami.play(events_only(read_recording(recording)))
                total += len(expected(recording))
                await wait_for(lambda: len(kommo.journal.calls) >= total, 10)  # noqa: B023
            await wait_for(lambda: daemon.table_sizes().get("journal_pending") == 0)
    got = {call.uniq: call.body for call in kommo.journal.calls}
    assert sorted(got) == sorted(wanted)  # every expected record, once, and no other
    for call_id, record in wanted.items():
        body = got[call_id]
        assert body["direction"] == record["direction"], call_id
        assert body["call_status"] == record["status"], call_id
        assert abs(body["duration"] - record["duration"]) <= 1, call_id
        assert body["phone"] == record["phone"], call_id
        if record["direction"] == "inbound":
            answered = users.get(record["answered_by"]) if record["answered_by"] else None
            assert body.get("responsible_user_id") == answered, call_id
