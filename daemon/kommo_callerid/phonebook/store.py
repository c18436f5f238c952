"""The mirror: one SQLite file (``[phonebook] database``) holding Kommo's phone book.

WAL, so lookups read (on the event loop, a few µs per indexed query) while the one writer
(the sync, on its own thread) commits; ``synchronous=NORMAL``, because everything here can be
fetched again: a commit lost to a power cut is repaired by the next sync (the cursor is
committed in the same transaction as the records it covers, so they never disagree).

A file that is ours but damaged or of another schema version is moved aside (damaged) or
emptied (version) and rebuilt by a full pass: it is a copy, and waiting for an operator would
leave every call to Kommo's by_phone meanwhile. A valid SQLite database that is not ours
(``PRAGMA application_id``) is refused (exit 3 with a sentence): the path most likely names
another file, the call journal say, and rebuilding would destroy it.

Size: the schema, the start-up checks and every query of the mirror in one place.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from kommo_callerid.core.models import Entity, EntityType
from kommo_callerid.core.phonebook_models import BookKind, Deal, PhoneOwner
from kommo_callerid.core.sqlite import immediate
from kommo_callerid.phonebook.select import Candidate, choose, match_key

#: "KCPB": marks the file as this daemon's phone book.
APPLICATION_ID = 0x4B435042
SCHEMA_VERSION = 1
TYPE = {BookKind.CONTACTS: 1, BookKind.LEADS: 2, BookKind.COMPANIES: 3, BookKind.CUSTOMERS: 12}
_ENTITY = {
    1: EntityType.CONTACT,
    2: EntityType.LEAD,
    3: EntityType.COMPANY,
    12: EntityType.CUSTOMER,
}

_SCHEMA = """
CREATE TABLE owners (
    type INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL, responsible INTEGER,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, pass INTEGER NOT NULL,
    PRIMARY KEY (type, id)
) WITHOUT ROWID;
CREATE TABLE phones (
    type INTEGER NOT NULL, id INTEGER NOT NULL, digits TEXT NOT NULL,
    last7 INTEGER NOT NULL, last10 INTEGER NOT NULL
);
CREATE INDEX phones_last7 ON phones (last7);
CREATE INDEX phones_last10 ON phones (last10);
CREATE INDEX phones_owner ON phones (type, id);
CREATE TABLE links (
    type INTEGER NOT NULL, id INTEGER NOT NULL, deal_type INTEGER NOT NULL,
    deal_id INTEGER NOT NULL, PRIMARY KEY (type, id, deal_type, deal_id)
) WITHOUT ROWID;
CREATE TABLE deals (
    type INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL, responsible INTEGER,
    updated_at INTEGER NOT NULL, active INTEGER NOT NULL, pass INTEGER NOT NULL,
    PRIMARY KEY (type, id)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_TABLES = ("owners", "phones", "links", "deals", "meta")

#: One statement (so one consistent snapshot while the sync commits): every owner of the
#: number with each of its active deals (NULLs for an owner without one).
_FIND = (
    "SELECT o.type, o.id, o.name, o.responsible, o.created_at, d.type, d.id, d.name, "
    "d.responsible FROM phones p JOIN owners o ON o.type = p.type AND o.id = p.id "
    "LEFT JOIN links l ON l.type = o.type AND l.id = o.id "
    "LEFT JOIN deals d ON d.type = l.deal_type AND d.id = l.deal_id AND d.active = 1 "
    "WHERE p.last7 = ?"
)


class MirrorError(Exception):
    """The database cannot be used; the message is a sentence for the operator."""


class Mirror:
    """The mirror's queries, synchronous; one writer thread, readers anywhere (own connection)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        #: What :meth:`open` did to a file it could not use as it was ("" when nothing).
        self.rebuilt = ""

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Mirror:
        """Open (creating with mode 0600, or rebuilding, unless ``create`` is false: then
        read it as it is); :class:`MirrorError` when it cannot be used."""
        if not create:
            return cls(_open_existing(path), path)
        connection: sqlite3.Connection | None = None
        try:
            connection = _connect(path, private=True)
            rebuilt = _prepare(connection)
        except (_Foreign, sqlite3.OperationalError, OSError) as exc:
            # not ours, locked, unreadable: nothing a rebuild may touch
            if connection is not None:
                connection.close()
            raise MirrorError(_sentence(path, exc)) from None
        except sqlite3.DatabaseError as exc:  # damaged: a copy, so set it aside and rebuild
            if connection is not None:
                connection.close()
            connection, rebuilt = _rebuild(path, exc)
        mirror = cls(connection, path)
        mirror.rebuilt = rebuilt
        return mirror

    def close(self) -> None:
        self._db.close()

    # -- lookups ---------------------------------------------------------------------------

    def find(self, digits: str) -> tuple[Entity, Entity | None] | None:
        """by_phone's answer from the mirror: (entity, phone_entity), None when unknown."""
        key = match_key(digits)
        if key is None:
            return None
        owners: dict[tuple[int, int], tuple[Entity, int, dict[tuple[int, int], Entity]]] = {}
        for row in self._db.execute(_FIND, (key,)):
            type_, id_, name, responsible, created_at, deal_type, deal_id, deal_name, deal_resp = (
                row
            )
            found = owners.get((type_, id_))
            if found is None:
                owner = Entity(_ENTITY[type_], id_, name, responsible)
                found = owners[type_, id_] = (owner, created_at, {})
            if deal_type is not None:
                found[2][deal_type, deal_id] = Entity(
                    _ENTITY[deal_type], deal_id, deal_name, deal_resp
                )
        if not owners:
            return None
        kind = 3 if any(type_ == 3 for type_, _ in owners) else 1  # companies first
        return choose(
            [
                Candidate(
                    owner,
                    created_at,
                    tuple(d for (t, _), d in deals.items() if t == 2),
                    tuple(d for (t, _), d in deals.items() if t == 12),
                )
                for (type_, _), (owner, created_at, deals) in owners.items()
                if type_ == kind
            ]
        )

    # -- the sync's writes -----------------------------------------------------------------

    def apply(self, kind: BookKind, records: Sequence[PhoneOwner | Deal], pass_id: int) -> int:
        """Store one page in one transaction (and the kind's cursor); how many records
        were new or changed."""
        type_ = TYPE[kind]
        changed = 0
        with self._write():
            cursor = int(self._meta(f"cursor.{kind.value}") or 0)
            table = "owners" if kind.owns_phones else "deals"
            for record in records:
                row = self._db.execute(
                    f"SELECT updated_at FROM {table} WHERE type = ? AND id = ?",  # noqa: S608
                    (type_, record.id),
                ).fetchone()
                if row is None or row[0] != record.updated_at:
                    changed += 1
                if isinstance(record, PhoneOwner):
                    self._put_owner(type_, record, pass_id)
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO deals VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            type_,
                            record.id,
                            record.name,
                            record.responsible_user_id,
                            record.updated_at,
                            int(record.active),
                            pass_id,
                        ),
                    )
                cursor = max(cursor, record.updated_at)
            self._set_meta(f"cursor.{kind.value}", str(cursor))
        return changed

    def _put_owner(self, type_: int, owner: PhoneOwner, pass_id: int) -> None:
        db = self._db
        db.execute(
            "INSERT OR REPLACE INTO owners VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                type_,
                owner.id,
                owner.name,
                owner.responsible_user_id,
                owner.created_at,
                owner.updated_at,
                pass_id,
            ),
        )
        db.execute("DELETE FROM phones WHERE type = ? AND id = ?", (type_, owner.id))
        db.execute("DELETE FROM links WHERE type = ? AND id = ?", (type_, owner.id))
        db.executemany(
            "INSERT INTO phones VALUES (?, ?, ?, ?, ?)",
            [
                (type_, owner.id, digits, int(digits[-7:]), int(digits[-10:]))
                for digits in owner.phones
                if len(digits) >= 7
            ],
        )
        db.executemany(
            "INSERT OR IGNORE INTO links VALUES (?, ?, ?, ?)",
            [(type_, owner.id, 2, lead) for lead in owner.lead_ids]
            + [(type_, owner.id, 12, customer) for customer in owner.customer_ids],
        )

    def unseen(self, kind: BookKind, pass_id: int) -> tuple[int, ...]:
        """The ids of ``kind`` a full pass did not see (yet)."""
        table = "owners" if kind.owns_phones else "deals"
        rows = self._db.execute(
            f"SELECT id FROM {table} WHERE type = ? AND pass != ? ORDER BY id",  # noqa: S608
            (TYPE[kind], pass_id),
        )
        return tuple(row[0] for row in rows)

    def remove_unseen(self, kind: BookKind, pass_id: int) -> int:
        """After a full pass of ``kind``: forget what it did not see (deleted, merged)."""
        type_ = TYPE[kind]
        with self._write():
            if kind.owns_phones:
                gone = [
                    row[0]
                    for row in self._db.execute(
                        "SELECT id FROM owners WHERE type = ? AND pass != ?", (type_, pass_id)
                    )
                ]
                for table in ("owners", "phones", "links"):
                    self._db.executemany(
                        f"DELETE FROM {table} WHERE type = ? AND id = ?",  # noqa: S608
                        [(type_, id_) for id_ in gone],
                    )
                return len(gone)
            cursor = self._db.execute(
                "DELETE FROM deals WHERE type = ? AND pass != ?", (type_, pass_id)
            )
            return cursor.rowcount

    def cursor(self, kind: BookKind) -> int | None:
        value = self._meta(f"cursor.{kind.value}")
        return int(value) if value is not None else None

    def get_meta(self, key: str) -> str | None:
        return self._meta(key)

    def set_meta(self, values: dict[str, str | None]) -> None:
        with self._write():
            for key, value in values.items():
                if value is None:
                    self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    self._set_meta(key, value)

    def counts(self) -> dict[str, int]:
        """Entries per kind."""
        found: dict[str, int] = {}
        for table, kinds in (("owners", (1, 3)), ("deals", (2, 12))):
            rows = dict(
                self._db.execute(
                    f"SELECT type, count(*) FROM {table} GROUP BY type"  # noqa: S608
                ).fetchall()
            )
            for type_ in kinds:
                found[_KIND_NAME[type_]] = int(rows.get(type_, 0))
        return found

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _write(self) -> contextlib.AbstractContextManager[None]:
        return immediate(self._db)


_KIND_NAME = {TYPE[kind]: kind.value for kind in BookKind}


class _Foreign(sqlite3.DatabaseError):
    """A valid SQLite database that is not a phone book."""


def _connect(path: Path, *, private: bool = False) -> sqlite3.Connection:
    if private:  # created with mode 0600 before SQLite does (it would use the umask)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    connection = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


def _open_existing(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise MirrorError(f"There is no phone book at {path} yet: the daemon creates it.")
    try:
        connection = _connect(path)
        ours = _application_id(connection) == APPLICATION_ID
    except sqlite3.Error as exc:
        raise MirrorError(_sentence(path, exc)) from None
    if not ours or _version(connection) != str(SCHEMA_VERSION):
        connection.close()
        raise MirrorError(f"{path} is not a phone book of this version (yet).")
    return connection


def _application_id(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA application_id").fetchone()[0])


def _version(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def _prepare(connection: sqlite3.Connection) -> str:
    """Check the file, switch to WAL, make the schema; what was rebuilt ("" when nothing).
    Raises ``sqlite3.DatabaseError`` when it is damaged and :class:`_Foreign` when not ours."""
    verdict = connection.execute("PRAGMA quick_check").fetchone()
    if verdict is None or verdict[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {verdict and verdict[0]}")
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    app = _application_id(connection)
    if (app != APPLICATION_ID and tables) or (app not in (0, APPLICATION_ID)):
        raise _Foreign("a database of another application (not a phone book)")
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise sqlite3.OperationalError("cannot switch to WAL mode (read-only?)")
    connection.execute("PRAGMA synchronous=NORMAL")
    rebuilt = ""
    version = _version(connection) if tables else None
    if tables and version != str(SCHEMA_VERSION):
        rebuilt = f"schema version {version} (this daemon's is {SCHEMA_VERSION}); rebuilt"
    if not tables or rebuilt:
        connection.execute("BEGIN IMMEDIATE")
        for table in _TABLES:
            connection.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        connection.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute("COMMIT")
    return rebuilt


def _rebuild(path: Path, damage: BaseException) -> tuple[sqlite3.Connection, str]:
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    try:
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        connection = _connect(path, private=True)
        _prepare(connection)
    except (OSError, sqlite3.Error) as exc:
        raise MirrorError(_sentence(path, exc)) from None
    return connection, f"damaged ({damage}); moved aside to {aside.name}, rebuilt by a full pass"


def _sentence(path: Path, exc: BaseException) -> str:
    why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    hint = (
        "check that [phonebook] database names a file of its own (not the call journal's), "
        "that the directory exists and the service user may write it, and that the disk has room"
    )
    return f"The phone book's database {path} cannot be used: {why}; {hint}."
