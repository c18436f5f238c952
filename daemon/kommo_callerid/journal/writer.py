"""The journal's writer: finished calls from memory into the outbox, on a task of its own.

Why a task of its own: a send may wait a long time for Kommo (an outage, the rate limit's
lowest priority), and a call that ends meanwhile must be on disk within a second. When the
sender also wrote, between its sends, a SIGKILL during a 503 storm lost 19 of 20 calls
(issue 18). Writing now never waits for sending: both share the outbox's one database thread,
whose statements take milliseconds, never a request's seconds.

Why a bounded memory queue and retries, not an exit: a database that cannot be opened or
written (a missing directory, a full disk, another process holding SQLite's write lock) must
never stop caller ID. Finished calls wait here (at most :data:`MEMORY_CAPACITY`), the writer
retries with a capped, jittered backoff, ``usable`` turns false (``/healthz`` says
``"journal": "unusable"``), and a ``journal.unusable`` line repeats every minute. Only the
outbox's lock held by another daemon of ours is fatal, and only at start-up (see
:mod:`.lock`). A record leaves the queue only once its transaction has committed, so nothing
that ``unwritten`` counts is on disk, and nothing on disk is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections import deque
from collections.abc import Callable

import structlog

from kommo_callerid.journal.entry import JournalEntry
from kommo_callerid.journal.lifecycle import retry_after
from kommo_callerid.journal.lock import OutboxHeld, OutboxLock
from kommo_callerid.journal.outbox import AsyncOutbox, OutboxError, unusable_sentence

log = structlog.get_logger(__name__)

#: Finished calls kept in memory while the database cannot take them (about 1 KB each).
MEMORY_CAPACITY = 10_000
#: Seconds from one write to the next at the least (a group commit): a lone call is written
#: at once; calls that end close together share a transaction, its fsync and its trip to the
#: database thread (at 50 calls/s, 10 writes a second instead of 50). A crash may lose what
#: ended in the last WRITE_GAP, far inside the contract's "on disk within a second".
WRITE_GAP = 0.1
#: Records written per transaction (a burst is a few fsyncs, not one per call).
WRITE_BATCH = 500
#: While the database is unusable, ``journal.unusable`` is logged this often.
REPORT_EVERY = 60.0
#: A stop retries a failing database this often until its time is up.
STOP_RETRY = 0.5
#: The retry backoff's cap while running (seconds).
RETRY_CAP = 30.0

#: What the sender is told: records just written, and call ids refused (the outbox is full).
Written = Callable[[list[JournalEntry], list[str]], None]


class OutboxWriter:
    def __init__(
        self,
        outbox: AsyncOutbox,
        on_written: Written,
        *,
        exclusive: bool = False,
        lock: OutboxLock | None = None,
        capacity: int = MEMORY_CAPACITY,
        gap: float = WRITE_GAP,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self._on_written = on_written
        #: Take the outbox's lock before opening it (the daemon; the tests' senders do not).
        self._exclusive = exclusive
        self._lock = lock
        self.capacity = capacity
        self._monotonic = monotonic
        self._gap = gap
        self._last_write = -gap
        self._queue: deque[JournalEntry] = deque()
        #: Set once the outbox is open (the sender waits for it).
        self.opened = asyncio.Event()
        if outbox.is_open:
            self.opened.set()
        #: False while the database cannot be opened or written.
        self.usable = outbox.is_open
        #: Why not, as a sentence for the operator ("" while usable).
        self.problem = ""
        self._failures = 0
        self._retry_in = 0.0
        self._next_report = 0.0
        #: Set by a new record (the writer is idle) and by a stop.
        self._wake = asyncio.Event()
        #: Set by a stop only: new records do not cut a retry's pause short.
        self._stop_wake = asyncio.Event()
        self._stopping = False
        self._giving_up = False
        self._task: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        """Finished calls only in memory: a crash now loses them."""
        return len(self._queue)

    def offer(self, entry: JournalEntry) -> bool:
        """Queue a record for the outbox (never blocks); False when the queue is full."""
        if len(self._queue) >= self.capacity:
            return False
        self._queue.append(entry)
        self._wake.set()
        return True

    async def open(self) -> None:
        """One attempt to open the outbox (start-up); a failure is reported and retried by the
        running writer. :class:`OutboxHeld` when another daemon holds it."""
        try:
            await self._open()
        except OutboxHeld:
            raise
        except (OutboxError, sqlite3.Error, OSError) as exc:
            self._failed(exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def stop(self, timeout: float) -> int:
        """Write what waits, for up to ``timeout``; then let a write in progress end (it cannot
        be taken back half-way: its outcome decides the count) and stop. How many records
        could not be written."""
        self._stopping = True
        self._wake.set()
        self._stop_wake.set()
        task = self._task
        if task is not None:
            _, waiting = await asyncio.wait({task}, timeout=max(0.0, timeout))
            if waiting:
                self._giving_up = True
                self._stop_wake.set()
                await task
        return len(self._queue)

    def release(self) -> None:
        """Give the outbox's lock back (after the outbox is closed)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _run(self) -> None:
        while not self._giving_up:
            if not self._queue and (self._stopping or self.opened.is_set()):
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._wait_gap()
            if not await self._attempt():
                await self._pause(min(self._retry_in, STOP_RETRY if self._stopping else RETRY_CAP))

    async def _wait_gap(self) -> None:
        """Let the calls that end close together share a write (a stop does not wait)."""
        left = self._last_write + self._gap - self._monotonic()
        if left > 0 and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_wake.wait(), left)

    async def _attempt(self) -> bool:
        """Open the outbox if needed, then write one batch; False (reported) on a failure."""
        try:
            if not self.opened.is_set():
                await self._open()
            if self._queue:
                await self._write()
        except (OutboxError, OutboxHeld, sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # a bug must not end the writer: report it as a failure
            log.exception("journal.error")
            self._failed(exc)
            return False
        self._failures = 0
        self.usable, self.problem = True, ""
        return True

    async def _open(self) -> None:
        if self._exclusive and self._lock is None:
            self._lock = OutboxLock.take(self.outbox.path)
        await self.outbox.open()
        self.usable, self.problem = True, ""
        self.opened.set()
        self._on_written([], [])  # the sender may begin

    async def _write(self) -> None:
        batch = list(itertools.islice(self._queue, WRITE_BATCH))
        self._last_write = self._monotonic()
        written, refused = await self.outbox.insert(batch)
        for _ in batch:  # committed (or refused, or a call written before): no longer ours
            self._queue.popleft()
        self._on_written(written, refused)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._retry_in = min(RETRY_CAP, retry_after(self._failures))
        self.usable = False
        self.problem = (
            str(exc)
            if isinstance(exc, OutboxError | OutboxHeld)
            else unusable_sentence(self.outbox.path, exc)
        )
        now = self._monotonic()
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY
            log.error(
                "journal.unusable",
                detail=self.problem,
                unwritten=len(self._queue),
                retry_in=round(self._retry_in, 1),
            )

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``; a stop cuts it short once (then it retries every STOP_RETRY)."""
        if self._stop_wake.is_set():
            self._stop_wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_wake.wait(), seconds)
