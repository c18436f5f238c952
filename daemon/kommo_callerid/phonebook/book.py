"""The mirror for the event loop: the sync's writes on one worker thread (one writer), the
lookups on the loop itself through a read connection of their own.

Why lookups on the loop: two indexed queries take some 10-20 µs, less than handing them to a
thread and back; WAL lets them read while the writer commits. What the sync learned (last
sync, last full pass, entries) is kept here too, for lookups, ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from kommo_callerid.core.models import Entity
from kommo_callerid.core.phonebook_models import BookKind, Deal, PhoneOwner
from kommo_callerid.phonebook.store import Mirror, MirrorError

T = TypeVar("T")
WallClock = Callable[[], float]
#: A mirror whose last sync succeeded within this many ``sync_interval`` s is fresh.
FRESH_INTERVALS = 3


class PhoneBookBusy(MirrorError):
    """Another process (a running daemon) is the mirror's writer."""


class PhoneBook:
    """Open with :meth:`open`; raises :class:`MirrorError` (a sentence) when unusable."""

    def __init__(
        self, path: Path, *, sync_interval: float, wall_clock: WallClock = time.time
    ) -> None:
        self.path = path
        self._wall = wall_clock
        self._fresh_for = FRESH_INTERVALS * sync_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phonebook-db")
        self._writer: Mirror | None = None
        self._reader: Mirror | None = None
        self._lock_fd: int | None = None
        #: Entries per kind after the last write.
        self.counts: dict[str, int] = {kind.value: 0 for kind in BookKind}
        #: Wall-clock time of the last successful sync / full pass; None: never.
        self.last_sync: float | None = None
        self.last_full: float | None = None
        #: The first full pass has finished: until then the mirror answers nothing.
        self.complete = False
        #: What opening had to rebuild ("" when nothing).
        self.rebuilt = ""
        #: Lookups by who answered (``phonebook``, ``kommo``), since this process started;
        #: written to the file with each sync for ``kommo-callerid phonebook``.
        self.sources: Counter[str] = Counter()
        #: What the file says of the last writer's lookups (read by the command).
        self.recorded_sources: dict[str, int] = {}

    def reconfigure(self, sync_interval: float) -> None:
        self._fresh_for = FRESH_INTERVALS * sync_interval

    @property
    def entries(self) -> int:
        """Contacts and companies (what ``/healthz`` shows)."""
        return self.counts[BookKind.CONTACTS.value] + self.counts[BookKind.COMPANIES.value]

    def age(self) -> float | None:
        """Seconds since the last successful sync; None: never synced."""
        return None if self.last_sync is None else max(0.0, self._wall() - self.last_sync)

    def full_age(self) -> float | None:
        """Seconds since the last full pass; None: never."""
        return None if self.last_full is None else max(0.0, self._wall() - self.last_full)

    @property
    def fresh(self) -> bool:
        age = self.age()
        return self.complete and age is not None and age <= self._fresh_for

    async def open(self, *, read_only: bool = False) -> None:
        """Take the writer's lock, open (or rebuild) the file, read its state; ``read_only``:
        only read a file the daemon made (``lookup``, ``phonebook``), no lock, no writes."""
        if read_only:
            self._reader = Mirror.open(self.path, create=False)
            self._apply_state(*_read_state(self._reader))
            return
        self._lock()
        try:
            self._writer = await self._run(lambda: Mirror.open(self.path))
            self.rebuilt = self._writer.rebuilt
            self._reader = Mirror.open(self.path, create=False)
            await self.refresh()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await self._run(writer.close)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def find(self, digits: str) -> tuple[Entity, Entity | None] | None:
        """by_phone's answer from the mirror, on the caller's thread; raises
        ``sqlite3.Error`` when the file cannot be read."""
        if self._reader is None:
            raise RuntimeError("the phone book is not open")
        return self._reader.find(digits)

    async def refresh(self) -> None:
        writer = self._require()
        # Read in the database's thread, applied here: a state set from that thread would be
        # seen by the loop before the awaiting sync had finished its own bookkeeping.
        self._apply_state(*await self._run(lambda: _read_state(writer)))

    def _apply_state(self, counts: dict[str, int], meta: dict[str, str | None]) -> None:
        self.counts = counts
        self.last_sync = _float(meta["last_sync"])
        self.last_full = _float(meta["last_full"])
        self.complete = meta["complete"] == "1"
        self.recorded_sources = {
            source: int(_float(meta[f"lookups.{source}"]) or 0) for source in ("phonebook", "kommo")
        }

    async def cursor(self, kind: BookKind) -> int | None:
        writer = self._require()
        return await self._run(lambda: writer.cursor(kind))

    async def meta(self, key: str) -> str | None:
        writer = self._require()
        return await self._run(lambda: writer.get_meta(key))

    async def set_meta(self, values: dict[str, str | None]) -> None:
        writer = self._require()
        await self._run(lambda: writer.set_meta(values))

    async def apply(
        self, kind: BookKind, records: tuple[PhoneOwner | Deal, ...], pass_id: int
    ) -> int:
        writer = self._require()
        return await self._run(lambda: writer.apply(kind, records, pass_id))

    async def remove_unseen(self, kind: BookKind, pass_id: int) -> int:
        writer = self._require()
        return await self._run(lambda: writer.remove_unseen(kind, pass_id))

    async def unseen(self, kind: BookKind, pass_id: int) -> tuple[int, ...]:
        writer = self._require()
        return await self._run(lambda: writer.unseen(kind, pass_id))

    def wall_time(self) -> float:
        return self._wall()

    async def synced(self, *, full: bool, at: float | None = None) -> None:
        """A sync finished (at ``at``, wall clock; now when None: with ``[cluster]`` the
        syncing daemon's time): remember when, and after a full pass that the mirror is
        whole."""
        now = str(self._wall() if at is None else at)
        values: dict[str, str | None] = {
            "last_sync": now,
            **{f"lookups.{source}": str(n) for source, n in self.sources.items()},
        }
        if full:
            values |= {"last_full": now, "complete": "1", "full_requested": None}
        await self.set_meta(values)
        await self.refresh()

    def _lock(self) -> None:
        lock_path = Path(f"{self.path}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise MirrorError(
                f"The phone book's lock file {lock_path} cannot be opened: {exc.strerror}; "
                "check that the directory exists and the service user may write it."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PhoneBookBusy(f"Another process writes the phone book {self.path}.") from None
        self._lock_fd = fd

    def _require(self) -> Mirror:
        if self._writer is None:
            raise RuntimeError("the phone book is not open")
        return self._writer

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


_STATE_KEYS = ("last_sync", "last_full", "complete", "lookups.phonebook", "lookups.kommo")


def _read_state(mirror: Mirror) -> tuple[dict[str, int], dict[str, str | None]]:
    return mirror.counts(), {key: mirror.get_meta(key) for key in _STATE_KEYS}


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
