"""The phone book's Redis side with ``[cluster]``: who syncs (a lease) and what it synced
(a stream every other daemon applies to its own mirror).

The lease is one key set with ``SET NX PX`` to a token of the holder's; the holder renews it
(compare and ``PEXPIRE``, one Lua call) every :data:`STEP` seconds and deletes it when it
stops; a holder that died lets it lapse within :data:`LEASE_TTL` and the first daemon to ask
after that holds it.

The stream carries the holder's sync as operations (:class:`Begin` a full pass, a
:class:`Page` of records, :class:`Unseen`: forget what this pass did not see, :class:`Synced`),
JSON, at most :data:`MAXLEN` entries (``XADD MAXLEN ~``). Publishing is one Lua call that
refuses unless the caller holds the lease (a holder that paused past its lease cannot write
over its successor), chains each entry to the one before (``prev``: a reader that finds a
``prev`` other than the last entry it applied knows it missed some, trimmed or lost with a
Redis that restarted empty) and keeps, per kind, the newest ``updated_at`` published
(:meth:`PhonebookFeed.cursor`: where the next holder's incremental sync must start so the
readers miss nothing the previous holder fetched without publishing). A reader that missed
entries asks for a full pass (:meth:`PhonebookFeed.ask_full`); the holder takes the request
(:meth:`PhonebookFeed.take_full_request`) when it decides its next sync.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from kommo_callerid.cluster.link import FAILURES, ClusterLink
from kommo_callerid.core.phonebook_models import BookKind, Deal, PhoneOwner

#: How long the lease lives without renewal: how long a dead holder's sync waits for another.
LEASE_TTL = 6.0
#: How often the holder renews and the others read the stream (and ask for the lease).
STEP = 1.0
#: Entries the stream keeps (about: trimmed by whole nodes). An idle sync adds one
#: (its :class:`Synced`) per ``sync_interval``: 1,000 entries are some 3 hours at 10 s.
MAXLEN = 1000
#: Entries read at once (a page is up to 250 records: a read stays a few MB at most).
READ_COUNT = 20
#: How long a request for a full pass waits for the holder to take it.
FULL_REQUEST_TTL = 3600.0

ACQUIRE_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS: lease, stream, head, cursors; ARGV: token, maxlen, kind ('' none), cursor, entry.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local prev = redis.call('GET', KEYS[3]) or ''
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'prev', prev, 'op', ARGV[5])
redis.call('SET', KEYS[3], id)
if ARGV[3] ~= '' then
  local old = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
  if tonumber(ARGV[4]) > old then redis.call('HSET', KEYS[4], ARGV[3], ARGV[4]) end
end
return id
"""

#: KEYS: stream, head; ARGV: after ('' from the start), count.
READ = """
local first = '-'
if ARGV[1] ~= '' then first = '(' .. ARGV[1] end
local entries = redis.call('XRANGE', KEYS[1], first, '+', 'COUNT', ARGV[2])
return {redis.call('GET', KEYS[2]) or '', entries}
"""


class FeedError(Exception):
    """Publishing failed: Redis did not answer, or the lease is another daemon's now."""


@dataclass(frozen=True, slots=True)
class Begin:
    """A full pass starts."""


@dataclass(frozen=True, slots=True)
class Page:
    kind: BookKind
    records: tuple[PhoneOwner | Deal, ...]


@dataclass(frozen=True, slots=True)
class Unseen:
    """The full pass has read every ``kind``: forget what it did not see."""

    kind: BookKind


@dataclass(frozen=True, slots=True)
class Synced:
    full: bool
    #: Wall-clock time the holder's sync ended.
    at: float


Op = Begin | Page | Unseen | Synced


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    prev: str
    #: None: an entry this daemon cannot read (a newer version's): counts as missed.
    op: Op | None


def stream_id(raw: str) -> tuple[int, int]:
    """A stream id as a number pair, to compare ("1700000000000-3")."""
    ms, _, seq = raw.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


class PhonebookFeed:
    def __init__(self, link: ClusterLink) -> None:
        self._link = link
        redis = link.redis
        self._acquire = redis.register_script(ACQUIRE_RENEW)
        self._release = redis.register_script(RELEASE)
        self._publish = redis.register_script(PUBLISH)
        self._read = redis.register_script(READ)
        self._token = f"{link.node}:{uuid.uuid4().hex}"
        self.lease_key = link.key("phonebook", "leader")
        self.stream_key = link.key("phonebook", "feed")
        self._head_key = link.key("phonebook", "head")
        self._cursor_key = link.key("phonebook", "cursor")
        self._full_key = link.key("phonebook", "full")

    @property
    def ok(self) -> bool:
        """Redis answers (else every daemon works alone)."""
        return self._link.ok

    async def hold(self) -> bool:
        """Take the lease, or renew ours; False when another daemon holds it or Redis fails."""
        ttl_ms = round(LEASE_TTL * 1000)
        try:
            held = await self._link.call(
                self._acquire(keys=[self.lease_key], args=[self._token, ttl_ms])
            )
        except FAILURES:
            return False
        return bool(held)

    async def release(self) -> None:
        """Give the lease up (stopping): another daemon takes it at its next step."""
        if self._link.ok:
            try:
                await self._link.call(self._release(keys=[self.lease_key], args=[self._token]))
            except FAILURES:
                return

    async def publish(self, op: Op) -> str:
        """Append ``op`` to the stream; its id. Raises :class:`FeedError`."""
        kind, cursor = "", 0
        if isinstance(op, Page):
            kind = op.kind.value
            cursor = max((record.updated_at for record in op.records), default=0)
        keys = [self.lease_key, self.stream_key, self._head_key, self._cursor_key]
        args: list[str | int] = [self._token, MAXLEN, kind, cursor, encode(op)]
        try:
            found = await self._link.call(self._publish(keys=keys, args=args))
        except FAILURES as exc:
            raise FeedError(f"Redis: {type(exc).__name__}: {exc}"[:200]) from None
        if found is None:
            raise FeedError("the lease is another daemon's now")
        return _text(found)

    async def read(self, after: str | None) -> tuple[str, list[Entry]]:
        """(the newest id published, "" when none; up to :data:`READ_COUNT` entries after
        ``after``, None: from the oldest kept). Raises what redis-py raises."""
        head, rows = await self._link.call(
            self._read(keys=[self.stream_key, self._head_key], args=[after or "", READ_COUNT])
        )
        entries = []
        for row in rows:
            fields = _fields(row[1])
            entries.append(Entry(_text(row[0]), fields.get("prev", ""), decode(fields.get("op"))))
        return _text(head), entries

    async def cursor(self, kind: BookKind) -> int | None:
        """The newest ``updated_at`` of ``kind`` published; None: none (or Redis fails)."""
        try:
            raw = await self._link.call(self._link.redis.hget(self._cursor_key, kind.value))
        except FAILURES:
            return None
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    async def ask_full(self) -> None:
        """This reader missed entries: the holder's next sync is a full pass."""
        try:
            await self._link.call(
                self._link.redis.set(self._full_key, "1", px=round(FULL_REQUEST_TTL * 1000))
            )
        except FAILURES:
            return

    async def take_full_request(self) -> bool:
        """A reader asked for a full pass (taken: the next reader to miss asks again)."""
        try:
            return bool(await self._link.call(self._link.redis.getdel(self._full_key)))
        except FAILURES:
            return False


def encode(op: Op) -> str:
    match op:
        case Begin():
            data: dict[str, Any] = {"op": "begin"}
        case Unseen(kind):
            data = {"op": "unseen", "kind": kind.value}
        case Synced(full, at):
            data = {"op": "synced", "full": full, "at": at}
        case Page(kind, records):
            data = {"op": "page", "kind": kind.value, "records": [_record(r) for r in records]}
    return json.dumps(data, separators=(",", ":"))


def _record(record: PhoneOwner | Deal) -> list[Any]:
    if isinstance(record, PhoneOwner):
        return [
            record.id,
            record.name,
            record.responsible_user_id,
            record.created_at,
            record.updated_at,
            list(record.phones),
            list(record.lead_ids),
            list(record.customer_ids),
        ]
    return [record.id, record.name, record.responsible_user_id, record.updated_at, record.active]


def decode(raw: str | None) -> Op | None:
    """An entry's operation; None when it cannot be read (never raises)."""
    try:
        data: Any = json.loads(raw) if raw is not None else {}
        op = data["op"]
        if op == "begin":
            return Begin()
        if op == "synced":
            return Synced(bool(data["full"]), float(data["at"]))
        kind = BookKind(data["kind"])
        if op == "unseen":
            return Unseen(kind)
        if op == "page":
            return Page(kind, tuple(_from_row(kind, row) for row in data["records"]))
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None


def _from_row(kind: BookKind, row: list[Any]) -> PhoneOwner | Deal:
    if kind.owns_phones:
        id_, name, responsible, created_at, updated_at, phones, leads, customers = row
        return PhoneOwner(
            kind,
            int(id_),
            str(name),
            _optional_int(responsible),
            int(created_at),
            int(updated_at),
            tuple(str(phone) for phone in phones),
            tuple(int(lead) for lead in leads),
            tuple(int(customer) for customer in customers),
        )
    id_, name, responsible, updated_at, active = row
    responsible = _optional_int(responsible)
    return Deal(kind, int(id_), str(name), responsible, int(updated_at), bool(active))


def _optional_int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _text(raw: Any) -> str:
    # (an unreadable entry is then one decode() refuses: missed, never a crash)
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _fields(raw: Any) -> dict[str, str]:
    """An XRANGE entry's fields (a flat list from a script, or a mapping) as text."""
    if isinstance(raw, dict):
        return {_text(key): _text(value) for key, value in raw.items()}
    items = [_text(item) for item in raw]
    return dict(zip(items[::2], items[1::2], strict=False))
