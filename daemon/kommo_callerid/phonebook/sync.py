"""Keeps the mirror in step with Kommo: incremental syncs every ``sync_interval``, a full
pass every ``full_sync_interval`` (and the first time).

Incremental: per kind, what changed since the last change seen, minus :data:`OVERLAP` s
(Kommo's ``updated_at`` has one-second steps and a record committed late may carry an
earlier second), oldest change first, 250 a page; idle, that is one request per kind. A full
pass reads everything and then forgets what it did not see (deleted, merged). Deals first,
then their owners, so an owner's new lead is in the mirror when the owner points at it.

A full pass reads page after page while Kommo may change the list under it: a record deleted
(or updated, which moves it to the end of the order) in a page already read shifts the rest
one place up, and the record that moved into the page already read is not seen. So before
forgetting what a pass did not see, the pass asks for those records by id (``filter[id][]``,
:data:`RECHECK_IDS` a request): only what Kommo does not return is forgotten. Idle that costs
nothing (nothing unseen), and one request per :data:`RECHECK_IDS` records really deleted.

A failed sync is retried after a capped, jittered backoff (``phonebook.error``); the mirror
keeps answering meanwhile. A pass interrupted halfway leaves what it wrote (every page is
its own transaction with its cursor), and the next full pass starts over.

With ``[cluster]`` a :class:`Publisher` (``phonebook.follow.Leadership``) says whether this
daemon syncs and takes what it reads before the mirror does: a page the others were not
given is not stored here either, so the next sync reads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from kommo_callerid.cluster.phonebook_feed import Begin, FeedError, Op, Page, Synced, Unseen
from kommo_callerid.core.config import PhonebookConfig
from kommo_callerid.core.models import KommoError
from kommo_callerid.core.phonebook_models import BookKind, BookPage, ListUnavailable
from kommo_callerid.phonebook.book import PhoneBook

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

OVERLAP = 5
ORDER = (BookKind.LEADS, BookKind.CUSTOMERS, BookKind.CONTACTS, BookKind.COMPANIES)
#: Longest wait between two failed syncs.
BACKOFF_CAP = 300.0
#: A full pass of a huge account must end some time: pages per kind at most.
MAX_PAGES = 100_000
#: Ids per re-check request (``filter[id][]``): a URL of some 2 KB.
RECHECK_IDS = 100


class Directory(Protocol):
    """What the sync needs of Kommo (``kommo.phonebook_api.KommoDirectory``)."""

    async def page(self, kind: BookKind, *, since: int | None, page: int) -> BookPage: ...
    async def by_ids(self, kind: BookKind, ids: tuple[int, ...]) -> BookPage: ...


class Publisher(Protocol):
    """With ``[cluster]``: where the daemon that syncs puts what it read for the others."""

    def publishing(self) -> bool: ...
    async def publish(self, op: Op) -> None: ...
    async def full_wanted(self) -> bool: ...
    async def cursor(self, kind: BookKind) -> int | None: ...


@dataclass(slots=True)
class SyncStats:
    requests: int = 0
    full_passes: int = 0
    incremental: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    full: bool
    changed: int
    removed: int
    requests: int
    ms: float


def backoff(failures: int, interval: float) -> float:
    ceiling = min(BACKOFF_CAP, max(interval, 1.0) * 2 ** min(failures, 16))
    return random.uniform(ceiling / 2, ceiling)


class PhoneBookSync:
    def __init__(
        self,
        book: PhoneBook,
        directory: Directory,
        config: PhonebookConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        may_sync: Callable[[], Awaitable[bool]] | None = None,
        publisher: Publisher | None = None,
        writing: asyncio.Lock | None = None,
    ) -> None:
        """``may_sync``: asked before each sync (a cluster's lease); False: another syncs.
        ``publisher``: takes every page before the mirror does (raises ``FeedError``).
        ``writing``: held through each sync; with ``[cluster]`` the feed's reader holds it
        too, so a pass never forgets what the feed stored meanwhile."""
        self._book = book
        self._publisher = publisher
        self._writing = writing or asyncio.Lock()
        self._directory = directory
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._may_sync = may_sync
        self.stats = SyncStats()
        self._wake = asyncio.Event()
        self._no_customers = False
        self._filter_ignored = False

    def wake(self) -> None:
        """Decide again now (this daemon just took the cluster's lease)."""
        self._wake.set()

    def reconfigure(self, config: PhonebookConfig) -> None:
        """SIGHUP: the intervals change from the next wait on."""
        self._config = config
        self._book.reconfigure(config.sync_interval)
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            if self._may_sync is not None and not await self._may_sync():
                await self._wait(self._config.sync_interval)
                continue
            full = await self._full_due()
            if not full and self._filter_ignored:
                await self._wait(self._config.sync_interval)
                continue
            try:
                async with self._writing:
                    await self.sync_once(full=full)
            except (KommoError, FeedError) as exc:
                failures += 1
                self.stats.failures += 1
                delay = backoff(failures, self._config.sync_interval)
                log.warning(
                    "phonebook.error",
                    detail=(
                        f"{exc.endpoint}: {exc.detail}"
                        if isinstance(exc, KommoError)
                        else f"publishing to the cluster: {exc}"
                    ),
                    status=exc.status if isinstance(exc, KommoError) else None,
                    full=full,
                    retry_in=round(delay, 1),
                )
                await self._wait(delay)
                continue
            failures = 0
            await self._wait(self._config.sync_interval)

    async def _full_due(self) -> bool:
        book = self._book
        age = book.full_age()
        if not book.complete or age is None:
            return True
        if await book.meta("full_requested") is not None:
            return True
        publisher = self._publisher
        if publisher is not None and publisher.publishing() and await publisher.full_wanted():
            return True  # another daemon's mirror missed entries of the feed
        return age >= self._config.full_sync_interval

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def sync_once(self, *, full: bool) -> SyncOutcome:
        """One sync of every kind; raises :class:`KommoError` when Kommo fails and
        ``FeedError`` when the cluster would not take a page."""
        started = self._clock()
        book = self._book
        # Decided once: a sync that published a page and then did not would leave a hole.
        publisher = self._publisher
        feed = publisher if publisher is not None and publisher.publishing() else None
        pass_id = int(await book.meta("pass") or 0)
        if full:
            pass_id += 1
            await book.set_meta({"pass": str(pass_id)})
            if feed is not None:
                await feed.publish(Begin())
        changed = removed = requests = 0
        for kind in ORDER:
            since = None if full else await self._since(kind, feed)
            try:
                requests_, changed_ = await self._sync_kind(kind, since, pass_id, feed)
                if full:
                    requests_ += await self._recheck_unseen(kind, pass_id, feed)
            except ListUnavailable as exc:
                self._customers_off(str(exc))
                requests_, changed_ = 1, 0
            requests += requests_
            changed += changed_
            if full:
                if feed is not None:
                    await feed.publish(Unseen(kind))
                removed += await book.remove_unseen(kind, pass_id)
        at = book.wall_time()
        if feed is not None:
            await feed.publish(Synced(full, at))
        await book.synced(full=full, at=at)
        outcome = SyncOutcome(full, changed, removed, requests, self._ms_since(started))
        if full:
            self.stats.full_passes += 1
        else:
            self.stats.incremental += 1
        log.info(
            "phonebook.synced",
            full=full,
            changed=changed,
            removed=removed,
            entries=book.entries,
            requests=requests,
            ms=outcome.ms,
        )
        return outcome

    async def _since(self, kind: BookKind, feed: Publisher | None) -> int | None:
        cursor = await self._book.cursor(kind)
        if feed is not None and cursor is not None:
            # What the others were last given: this daemon may have read more while alone.
            published = await feed.cursor(kind)
            cursor = cursor if published is None else min(cursor, published)
        return None if cursor is None else max(0, cursor - OVERLAP)

    async def _store(
        self, kind: BookKind, page: BookPage, pass_id: int, feed: Publisher | None
    ) -> int:
        if feed is not None and page.records:
            await feed.publish(Page(kind, page.records))
        return await self._book.apply(kind, page.records, pass_id)

    async def _recheck_unseen(self, kind: BookKind, pass_id: int, feed: Publisher | None) -> int:
        """Ask for what the pass did not see by id (a deletion mid-pass shifts the pages);
        what Kommo still has is stored with this pass. Requests made."""
        if kind is BookKind.CUSTOMERS and self._no_customers:
            return 0
        unseen = await self._book.unseen(kind, pass_id)
        requests = 0
        for start in range(0, len(unseen), RECHECK_IDS):
            got = await self._directory.by_ids(kind, unseen[start : start + RECHECK_IDS])
            requests += 1
            self.stats.requests += 1
            await self._store(kind, got, pass_id, feed)
        return requests

    async def _sync_kind(
        self, kind: BookKind, since: int | None, pass_id: int, feed: Publisher | None
    ) -> tuple[int, int]:
        if kind is BookKind.CUSTOMERS and self._no_customers:
            return 0, 0
        page: int | None = 1
        requests = changed = 0
        while page is not None and page <= MAX_PAGES:
            got = await self._directory.page(kind, since=since, page=page)
            requests += 1
            self.stats.requests += 1
            if since is not None and any(0 < r.updated_at < since for r in got.records):
                self._filter_not_honoured(kind)
            changed += await self._store(kind, got, pass_id, feed)
            page = got.next_page
        return requests, changed

    def _customers_off(self, detail: str) -> None:
        if not self._no_customers:
            self._no_customers = True
            log.warning(
                "phonebook.error",
                detail=f"customers are switched off for this account ({detail}); skipped",
                retry_in=None,
            )

    def _filter_not_honoured(self, kind: BookKind) -> None:
        if not self._filter_ignored:
            self._filter_ignored = True
            log.warning(
                "phonebook.error",
                detail=(
                    f"Kommo ignored filter[updated_at] on {kind.value} (a limited feature on "
                    "this account); the phone book relies on full passes from now on"
                ),
                retry_in=None,
            )

    def _ms_since(self, started: float) -> float:
        return round((self._clock() - started) * 1000, 1)
