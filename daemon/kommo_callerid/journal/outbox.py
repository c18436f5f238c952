"""The durable outbox: one SQLite file (``[journal] database``) holding every journal record.

Why stdlib ``sqlite3`` in WAL mode on one dedicated worker thread, not ``aiosqlite``:
``aiosqlite`` is exactly that (a thread per connection and a queue), plus a dependency and
its own shutdown rules; one ``ThreadPoolExecutor(max_workers=1)`` gives the same "never block
the event loop" with every statement visible here, and the same class serves the synchronous
``kommo-callerid journal`` command.

Why ``synchronous=FULL``: in WAL mode NORMAL already survives a crash of the process
(SIGKILL), but a power cut or a kernel panic may roll back the last commits, and the journal
promises that a written call survives reboots. FULL costs one fsync per commit; records are
written in groups (every record that arrived while the previous commit ran), so a burst of
100 calls costs a few fsyncs, not 100.

A record is committed before any request for it is made, and its ``call_id`` is UNIQUE:
insert-or-ignore writes a call once, however often it is offered. Kommo's answer per record
(sent, the attached entity, the lead or task made after it, or why it was dropped) is kept.
Unsent records are bounded (:data:`DEFAULT_CAPACITY`); finished ones are pruned after
:data:`HISTORY_SECONDS`.

Size: the schema, the start-up checks and every query of the outbox in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

from kommo_callerid.core.models import CallDirection, CallStatus
from kommo_callerid.core.sqlite import immediate
from kommo_callerid.journal.entry import Followup, JournalEntry, State

T = TypeVar("T")

#: Unsent records the outbox holds; a record beyond this is refused (``journal.dropped`` full).
DEFAULT_CAPACITY = 100_000
#: Sent and dropped records stay this long for ``kommo-callerid journal``.
HISTORY_SECONDS = 30 * 86_400
#: 1: the first. 2: ``uniqueids`` and ``recording_file`` (the call's recording). An older
#: database gets the new columns when it is opened (:data:`_ADDED_COLUMNS`); an older daemon
#: opening a newer one is fine too (it names its columns, the new ones take their default).
SCHEMA_VERSION = 2
#: Seconds a statement of the commands waits for another process's write lock.
BUSY_TIMEOUT = 5.0
#: Seconds the event loop's read may wait: a WAL reader takes no lock a writer holds, so
#: only SQLite's rare recovery cases could make it wait at all (it then fails, and the
#: sender retries after its error pause).
READER_TIMEOUT = 0.05

#: The record's columns, ``id`` first (the rest in the order of :class:`JournalEntry`).
_COLUMNS = ("id", *(field.name for field in fields(JournalEntry) if field.name != "id"))
_UNSENT = (State.PENDING.value, State.FOLLOWUP.value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
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
    sent_at REAL, followup TEXT, lead_id INTEGER, task_id INTEGER,
    uniqueids TEXT NOT NULL DEFAULT '', recording_file TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS records_due ON records (state, next_try);
CREATE INDEX IF NOT EXISTS records_started ON records (started_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


#: Columns added since schema 1, as ``ALTER TABLE ... ADD COLUMN`` declares them (the rows
#: already there take the default: their calls' recordings are looked up as before).
_ADDED_COLUMNS = {
    "uniqueids": "TEXT NOT NULL DEFAULT ''",
    "recording_file": "TEXT NOT NULL DEFAULT ''",
}


class OutboxError(Exception):
    """The database cannot be used; the message is a sentence for the operator."""


class Outbox:
    """The outbox's queries, synchronous: run it on one thread (see :class:`AsyncOutbox`)."""

    def __init__(self, connection: sqlite3.Connection, capacity: int) -> None:
        self._db = connection
        self.capacity = capacity

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        capacity: int = DEFAULT_CAPACITY,
        create: bool = True,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> Outbox:
        """Open (creating with mode 0600 unless ``create`` is false) and prove writable;
        :class:`OutboxError` if not. ``busy_timeout``: how long a statement waits for another
        process's write lock before it fails."""
        if not create and not path.exists():
            raise OutboxError(f"There is no call journal at {path} yet: the daemon creates it.")
        try:
            _create_private(path)
            connection = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(unusable_sentence(path, exc)) from None
        try:
            _prepare(connection)
        except sqlite3.Error as exc:
            connection.close()
            raise OutboxError(unusable_sentence(path, exc)) from None
        return cls(connection, capacity)

    def close(self) -> None:
        self._db.close()

    def insert(self, entries: Sequence[JournalEntry]) -> tuple[list[JournalEntry], list[str]]:
        """Write new records in one transaction: (written, call ids refused because full).
        A call already in the outbox is neither written again nor refused."""
        written: list[JournalEntry] = []
        refused: list[str] = []
        with self._transaction():
            room = self.capacity - self._unsent_count()
            for entry in entries:
                if room <= 0:
                    refused.append(entry.call_id)
                    continue
                values = _row(entry)[1:]  # without id
                cursor = self._db.execute(_INSERT, values)
                if cursor.rowcount == 1:
                    written.append(_with_id(entry, cursor.lastrowid))
                    room -= 1
        return written, refused

    def due(self, now: float, limit: int) -> list[JournalEntry]:
        """Unsent records whose next attempt is due, oldest first."""
        cursor = self._db.execute(
            _SELECT + "WHERE state IN (?, ?) AND next_try <= ? ORDER BY next_try, id LIMIT ?",
            (*_UNSENT, now, limit),
        )
        return [_entry(row) for row in cursor]

    def next_try(self) -> float | None:
        """When the next unsent record is due; None when none is waiting."""
        row = self._db.execute(
            "SELECT min(next_try) FROM records WHERE state IN (?, ?)", _UNSENT
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def update(self, entries: Iterable[JournalEntry]) -> None:
        """Store the new state of records (Kommo's answers) in one transaction."""
        assignments = ", ".join(f"{name} = ?" for name in _COLUMNS[1:])
        with self._transaction():
            self._db.executemany(
                f"UPDATE records SET {assignments} WHERE id = ?",  # noqa: S608  (column names are ours)
                [(*_row(entry)[1:], entry.id) for entry in entries],
            )

    def pending(self) -> int:
        """Unsent records (those waiting for a follow-up too), read from the state index: cheap
        whatever the history holds (30 days of sent records)."""
        row = self._db.execute("SELECT count(*) FROM records WHERE state IN (?, ?)", _UNSENT)
        return int(row.fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Records per state (``pending`` includes those waiting for a follow-up)."""
        found = dict(self._db.execute("SELECT state, count(*) FROM records GROUP BY state"))
        return {
            "pending": found.get(State.PENDING.value, 0) + found.get(State.FOLLOWUP.value, 0),
            "sent": found.get(State.SENT.value, 0),
            "dropped": found.get(State.DROPPED.value, 0),
        }

    def listing(
        self,
        *,
        states: Sequence[State] = (),
        since: float | None = None,
        limit: int = 1000,
    ) -> list[JournalEntry]:
        """Calls newest first, optionally only in ``states`` and started since ``since``."""
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(state.value for state in states)
        if since is not None:
            where.append("started_at >= ?")
            params.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cursor = self._db.execute(
            f"{_SELECT}{clause} ORDER BY recorded_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_entry(row) for row in cursor]

    def due_now(self, now: float) -> int:
        """Every unsent record is due at ``now`` (a restart tries at once); how many. A record
        written "in the future" (the wall clock was stepped back while it waited) counts its
        ``retain`` from ``now``, so it is neither kept forever nor tried in a year."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE records SET next_try = ?, recorded_at = min(recorded_at, ?) "
                "WHERE state IN (?, ?) AND (next_try > ? OR recorded_at > ?)",
                (now, now, *_UNSENT, now, now),
            )
        return cursor.rowcount

    def retry_dropped(self, now: float) -> int:
        """Dropped records become pending again, with a fresh ``retain``; how many."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE records SET state = ?, attempts = 0, next_try = ?, recorded_at = ?, "
                "reason = NULL, detail = '' WHERE state = ?",
                (State.PENDING.value, now, now, State.DROPPED.value),
            )
        return cursor.rowcount

    def prune(self, before: float) -> int:
        """Forget sent and dropped records written before ``before``; how many."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM records WHERE state NOT IN (?, ?) AND recorded_at < ?",
                (*_UNSENT, before),
            )
        return cursor.rowcount

    def _unsent_count(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM records WHERE state IN (?, ?)", _UNSENT
        ).fetchone()
        return int(row[0])

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return immediate(self._db)


class AsyncOutbox:
    """The outbox for the event loop: every write runs on one worker thread, in order.

    The sender's read of the due records runs on the loop itself, on a read-only connection
    of its own (issue 22). In WAL mode a reader neither waits for the writer nor syncs, and
    the read takes at most a batch of rows by index: some 50 µs. A trip to the thread cost
    the loop more than that: the worker and the loop hand the GIL to each other around every
    SQLite statement, and on a VM each hand-off waits for a sleeping thread to wake (a
    notification behind it waited 0.5-0.9 ms; measured in the latency benchmark).
    """

    def __init__(
        self, path: Path, *, capacity: int = DEFAULT_CAPACITY, busy_timeout: float = BUSY_TIMEOUT
    ) -> None:
        self.path = path
        self.capacity = capacity
        self.busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-db")
        self._outbox: Outbox | None = None
        #: The loop's own read-only connection (see the class's docstring).
        self._reader: Outbox | None = None
        #: Records per state after the last write (read by /healthz, /metrics, ``stats``).
        #: Unsent records on disk, refreshed with every write.
        self.pending = 0

    @property
    def is_open(self) -> bool:
        return self._outbox is not None

    async def open(self) -> None:
        """Raises :class:`OutboxError` (a sentence) when the database is unusable; it may be
        called again (the daemon retries until it works), until :meth:`close`."""
        outbox = await self._run(
            lambda: Outbox.open(self.path, capacity=self.capacity, busy_timeout=self.busy_timeout)
        )
        try:
            self.pending = await self._run(outbox.pending)
            reader = Outbox(_read_only(self.path), self.capacity)
        except sqlite3.Error as exc:
            await self._run(outbox.close)
            raise OutboxError(unusable_sentence(self.path, exc)) from None
        self._outbox, self._reader = outbox, reader

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await self._run(outbox.close)
        self._executor.shutdown(wait=True)

    # Each trip to the database thread costs two thread wake-ups (tens of microseconds on a
    # busy box): what one step needs goes in one trip (a write and the new counts; the due
    # records or, when none is due, the next retry time).

    async def insert(self, entries: Sequence[JournalEntry]) -> tuple[list[JournalEntry], list[str]]:
        result, self.pending = await self._call(
            lambda outbox: (outbox.insert(entries), outbox.pending())
        )
        return result

    def due_or_next_try(self, now: float, limit: int) -> tuple[list[JournalEntry], float | None]:
        """The records due now; when there are none, when the next one will be (else None).
        Read on the loop, from what the writer last committed (see the class's docstring)."""
        reader = self._reader
        if reader is None:
            raise RuntimeError("the outbox is not open")
        due = reader.due(now, limit)
        return due, None if due else reader.next_try()

    async def update(self, entries: Sequence[JournalEntry]) -> None:
        def work(outbox: Outbox) -> int:
            outbox.update(entries)
            return outbox.pending()

        self.pending = await self._call(work)

    async def due_now(self, now: float) -> int:
        return await self._call(lambda outbox: outbox.due_now(now))

    async def prune(self, before: float) -> int:
        return await self._call(lambda outbox: outbox.prune(before))

    async def counts(self) -> dict[str, int]:
        """Records per state (a scan of the whole history: not for every call)."""
        return await self._call(lambda outbox: outbox.counts())

    async def _call(self, work: Callable[[Outbox], T]) -> T:
        outbox = self._outbox
        if outbox is None:
            raise RuntimeError("the outbox is not open")
        return await self._run(lambda: work(outbox))

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM records "  # noqa: S608  (column names are ours)
_INSERT = (
    f"INSERT OR IGNORE INTO records ({', '.join(_COLUMNS[1:])}) "  # noqa: S608  (ours)
    f"VALUES ({', '.join('?' * (len(_COLUMNS) - 1))})"
)


def _create_private(path: Path) -> None:
    """Create the file with mode 0600 before SQLite does (it would use the umask)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that can only read ``path`` (already prepared by the writer's)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=READER_TIMEOUT)


def _prepare(connection: sqlite3.Connection) -> None:
    """Check the file, switch to WAL, create the schema and write once (full disk, read-only
    files and corrupt pages show up here, at start-up, not with the first call)."""
    verdict = connection.execute("PRAGMA quick_check").fetchone()
    if verdict is None or verdict[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {verdict and verdict[0]}")
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError("cannot switch to WAL mode (read-only?)")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(_SCHEMA)
    connection.execute("BEGIN IMMEDIATE")  # one process migrates; the next finds it done
    present = {row[1] for row in connection.execute("PRAGMA table_info(records)")}
    for name, declaration in _ADDED_COLUMNS.items():
        if name not in present:
            connection.execute(f"ALTER TABLE records ADD COLUMN {name} {declaration}")
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
    )
    connection.execute("COMMIT")


def unusable_sentence(path: Path, exc: BaseException) -> str:
    why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    hint = (
        "check that the directory exists and the service user may write it, that the disk "
        "has room, and that the file is an SQLite database (move a damaged one aside)"
    )
    return f"The call journal's database {path} cannot be used: {why}; {hint}."


def _row(entry: JournalEntry) -> tuple[Any, ...]:
    """The record's values in :data:`_COLUMNS` order, enums as SQLite stores them."""
    values: list[Any] = []
    for name in _COLUMNS:
        value = getattr(entry, name)
        if isinstance(value, CallStatus):
            value = int(value)
        elif isinstance(value, tuple):  # uniqueids: Asterisk's never hold a space
            value = " ".join(value)
        elif isinstance(value, CallDirection | State | Followup):
            value = value.value
        values.append(value)
    return tuple(values)


def _entry(row: Sequence[Any]) -> JournalEntry:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["direction"] = CallDirection(data["direction"])
    data["status"] = CallStatus(data["status"])
    data["state"] = State(data["state"])
    data["followup"] = Followup(data["followup"]) if data["followup"] else None
    data["uniqueids"] = tuple(data["uniqueids"].split())
    return JournalEntry(**data)


def _with_id(entry: JournalEntry, row_id: int | None) -> JournalEntry:
    return replace(entry, id=row_id or 0)
