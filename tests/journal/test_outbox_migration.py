"""The outbox's schema 2 (``uniqueids``, ``recording_file``) over a database schema 1 wrote.

An operator upgrading with records still pending must neither lose them nor be stopped: the
new columns are added when the database is opened (the old rows get empty ones), the old
records are read and sent as before, and a database already migrated opens again untouched.
Before: the new code's statements named columns the old database had not."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from kommo_callerid.journal.entry import JournalEntry, State
from kommo_callerid.journal.outbox import SCHEMA_VERSION, Outbox

from support import finished_call

#: The outbox's schema 1, as the daemon released with it created it.
SCHEMA_1 = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL UNIQUE,
    pbx TEXT NOT NULL, linkedid TEXT NOT NULL, uniqueid TEXT NOT NULL,
    direction TEXT NOT NULL, phone TEXT NOT NULL, started_at REAL NOT NULL,
    duration INTEGER NOT NULL, status INTEGER NOT NULL,
    answered_by TEXT, extension TEXT, did TEXT, result TEXT NOT NULL,
    responsible_user_id INTEGER, link TEXT NOT NULL, recorded_at REAL NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, next_try REAL NOT NULL,
    entity_type TEXT, entity_id INTEGER, entity_responsible_id INTEGER,
    reason TEXT, detail TEXT NOT NULL,
    sent_at REAL, followup TEXT, lead_id INTEGER, task_id INTEGER
);
CREATE INDEX records_due ON records (state, next_try);
CREATE INDEX records_started ON records (started_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO records VALUES (
    1, '1.1', '', '1.1', '1.1', 'inbound', '+18305803077', 1780000000.0, 42, 4,
    '100', NULL, '5551000', 'answered by 100', NULL, '', 1780000050.0,
    'pending', 0, 1780000050.0, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL
);
"""


def schema_1(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    db.close()


def entry(linkedid: str, **fields: object) -> JournalEntry:
    call = finished_call(linkedid, "+18305803077")
    base = JournalEntry(
        **{name: getattr(call, name) for name in ("call_id", "pbx", "linkedid", "uniqueid")},
        direction=call.direction,
        phone=call.phone,
        started_at=call.started_at,
        duration=call.duration,
        status=call.status,
        answered_by=call.answered_by,
        extension=None,
        did=call.did,
        result=call.result,
        responsible_user_id=None,
        link="",
        recorded_at=1_780_000_100.0,
        next_try=1_780_000_100.0,
    )
    return replace(base, **fields)


def test_a_schema_1_database_keeps_its_records_and_takes_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    schema_1(path)
    outbox = Outbox.open(path)
    try:
        [old] = outbox.due(now=2e9, limit=10)
        assert (old.call_id, old.state, old.uniqueids, old.recording_file) == (
            "1.1",
            State.PENDING,
            (),
            "",
        )
        new = entry("2.1", uniqueids=("2.1", "2.4", "2.3"), recording_file="/m/a-2.4.wav")
        written, refused = outbox.insert([new])
        assert refused == [] and len(written) == 1
        outbox.update([replace(old, attempts=1)])
        by_id = {e.call_id: e for e in outbox.listing()}
        assert by_id["2.1"].uniqueids == ("2.1", "2.4", "2.3")
        assert by_id["2.1"].recording_file == "/m/a-2.4.wav"
        assert by_id["1.1"].attempts == 1
    finally:
        outbox.close()
    again = Outbox.open(path)  # migrated once: opening again changes nothing
    try:
        assert {e.call_id for e in again.listing()} == {"1.1", "2.1"}
    finally:
        again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    db.close()
    assert SCHEMA_VERSION == 2


def test_a_daemon_of_schema_1_can_still_write_to_a_migrated_database(tmp_path: Path) -> None:
    """Rolling the package back must not strand the journal: schema 1's insert names its
    columns, and the new ones take their defaults."""
    path = tmp_path / "journal.sqlite3"
    Outbox.open(path).close()
    with sqlite3.connect(path) as db:  # schema 1's INSERT: its own columns only
        db.execute(
            "INSERT INTO records (call_id, pbx, linkedid, uniqueid, direction, phone, "
            "started_at, duration, status, result, link, recorded_at, state, attempts, "
            "next_try, detail) VALUES "
            "('3.1', '', '3.1', '3.1', 'inbound', '+1', 1.0, 0, 6, 'x', '', 1.0, 'pending', "
            "0, 1.0, '')"
        )
    db.close()
    outbox = Outbox.open(path)
    try:
        [row] = outbox.listing()
        assert (row.call_id, row.uniqueids, row.recording_file) == ("3.1", (), "")
    finally:
        outbox.close()
