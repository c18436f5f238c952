"""The phone book with ``[cluster]``: one daemon syncs (the lease holder) and publishes what
it synced; every other daemon applies that to its own mirror (:class:`Follower`), so each
answers from its own file, in microseconds, also while Redis is lost.

A follower applies the holder's operations to its own mirror with its own pass numbers:
a :class:`~kommo_callerid.cluster.phonebook_feed.Begin` opens a pass, pages are stored with
it, and ``Unseen`` forgets what the pass did not see, exactly as the holder's own sync does.
A follower that missed entries (it started fresh, was stopped longer than the stream keeps,
or Redis lost them) keeps answering from what it has, stops counting as fresh, and asks the
holder for a full pass; the first full pass it reads from its ``Begin`` on makes it whole
again. Nothing but the holder ever asks Kommo: N daemons cost what one does.

While Redis is lost every daemon syncs itself, as everywhere else in the cluster a daemon
without Redis works alone (see :meth:`Leadership.may_sync`): idle, that is 4 requests per
``sync_interval`` per daemon, well within its share (``rate_limit / expected_nodes``), and
changed records are seen at once instead of when Redis returns. Nothing is published
meanwhile; the holder after the outage starts from the feed's cursor (what was last
published), so the others miss nothing it fetched alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import structlog

from kommo_callerid.cluster.link import FAILURES
from kommo_callerid.cluster.phonebook_feed import (
    READ_COUNT,
    STEP,
    Begin,
    Entry,
    Op,
    Page,
    PhonebookFeed,
    Synced,
    Unseen,
    stream_id,
)
from kommo_callerid.core.phonebook_models import BookKind
from kommo_callerid.phonebook.book import PhoneBook

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
#: Reads per step at most: a step that catches up on a long backlog still ends.
MAX_READS = 50


class Follower:
    """Applies the feed's entries to this daemon's mirror; its place is kept in the mirror
    (``feed.last``), so a restart goes on where it stopped."""

    def __init__(self, book: PhoneBook) -> None:
        self._book = book
        #: The last entry applied (or published by us); None: none yet.
        self.position: str | None = None
        #: Entries were missed since the last full pass read whole.
        self.gapped = False
        #: A full pass is being read from its Begin on (its Unseen may forget).
        self.pass_open = False
        self.applied = 0

    async def load(self) -> None:
        book = self._book
        self.position = await book.meta("feed.last")
        self.gapped = await book.meta("feed.gap") == "1"
        self.pass_open = await book.meta("feed.open") == "1"

    async def apply(self, head: str, entries: list[Entry]) -> None:
        """One read's entries, in order; ``head``: the newest id published ("" none)."""
        restarted = bool(self.position and head and stream_id(head) < stream_id(self.position))
        if restarted:
            self.position = None  # the stream started over below us (Redis lost it)
            self._missed()
        pass_id = int(await self._book.meta("pass") or 0)
        for entry in entries:
            if entry.prev != (self.position or "") or entry.op is None:
                self._missed()
            self.position = entry.id
            if entry.op is not None:
                pass_id = await self._apply(entry.op, pass_id)
            self.applied += 1
        if not entries and not restarted:
            return
        await self._book.set_meta(
            {
                "feed.last": self.position,
                "feed.gap": "1" if self.gapped else None,
                "feed.open": "1" if self.pass_open else None,
                **({"full_requested": "1"} if self.gapped else {}),
            }
        )

    async def _apply(self, op: Op, pass_id: int) -> int:
        book = self._book
        match op:
            case Begin():
                pass_id += 1
                self.pass_open = True
                await book.set_meta({"pass": str(pass_id)})
            case Page(kind, records):
                await book.apply(kind, records, pass_id)
            case Unseen(kind) if self.pass_open:
                await book.remove_unseen(kind, pass_id)
            case Synced(full, at):
                # a pass read whole from its Begin; any other pass (its holder died) is over
                whole, self.pass_open = full and self.pass_open, False
                if whole:
                    self.gapped = False
                    await book.synced(full=True, at=at)
                elif not self.gapped:
                    await book.synced(full=False, at=at)
        return pass_id

    def _missed(self) -> None:
        if not self.gapped:
            log.warning(
                "phonebook.error",
                detail="entries of the syncing daemon's feed were missed; asked for a full pass",
                retry_in=None,
            )
        self.gapped = True
        self.pass_open = False


class Leadership:
    """Holds (or waits for) the sync's lease and, while another holds it, follows the feed.
    :meth:`run` is its loop; :meth:`may_sync` the sync's hook; :meth:`publish` the sync's
    way into the feed."""

    def __init__(
        self,
        feed: PhonebookFeed,
        book: PhoneBook,
        *,
        writing: asyncio.Lock,
        on_lead: Callable[[], None] = lambda: None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``writing``: the sync's (one of us writes the mirror at a time)."""
        self._feed = feed
        self._writing = writing
        self._book = book
        self.follower = Follower(book)
        #: Called when this daemon takes the lease (the sync decides again at once).
        self.on_lead = on_lead
        self._sleep = sleep
        self.leading = False
        self._loaded = False

    async def may_sync(self) -> bool:
        """Sync now: we hold the lease, or Redis is lost (every daemon works alone)."""
        return self.leading or not self._feed.ok

    def publishing(self) -> bool:
        """A sync starting now publishes what it reads."""
        return self.leading and self._feed.ok

    async def publish(self, op: Op) -> None:
        """Into the feed (raises ``FeedError``); this mirror has it, so the place moves on."""
        self.follower.position = await self._feed.publish(op)
        await self._book.set_meta({"feed.last": self.follower.position})

    async def full_wanted(self) -> bool:
        return await self._feed.take_full_request()

    async def cursor(self, kind: BookKind) -> int | None:
        return await self._feed.cursor(kind)

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await self._sleep(STEP)
        finally:
            if self.leading:
                self.leading = False
                await self._feed.release()

    async def step(self) -> None:
        if not self._loaded:
            await self.follower.load()
            self._loaded = True
        feed = self._feed
        if not feed.ok:
            self.leading = False  # alone; the lease lapses in Redis meanwhile
            return
        if self.leading:
            if not await feed.hold():
                self.leading = False
                log.warning("phonebook.error", detail="the sync's lease was lost", retry_in=None)
            return
        try:
            await self._catch_up()
            if await feed.hold():
                await self._catch_up()  # what the previous holder published meanwhile
                self.leading = True
                self.on_lead()
                return
            if not self.follower.pass_open and await self._wants_full():
                await feed.ask_full()
        except FAILURES:
            return  # the link's probe decides whether Redis is lost
        except sqlite3.Error as exc:  # the mirror's disk: logged, tried again next step
            log.error("phonebook.error", detail=f"applying the feed: {exc}", retry_in=STEP)

    async def _wants_full(self) -> bool:
        """This mirror needs a full pass: never whole, entries missed (which marks
        ``full_requested``), or ``kommo-callerid phonebook --sync`` asked for one."""
        book = self._book
        return not book.complete or await book.meta("full_requested") is not None

    async def _catch_up(self) -> None:
        async with self._writing:  # a sync this daemon ran alone may still be running
            await self._read_all()

    async def _read_all(self) -> None:
        for _ in range(MAX_READS):
            head, entries = await self._feed.read(self.follower.position)
            await self.follower.apply(head, entries)
            if len(entries) < READ_COUNT:
                return
