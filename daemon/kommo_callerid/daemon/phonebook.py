"""The phone book's wiring: the mirror opened at start-up (a foreign file: exit 3 with a
sentence), its sync filled with the Kommo client's transport (one rate limit, lowest
priority), with ``[cluster]`` the lease and the feed (one daemon syncs, every daemon reads its
own mirror fed from it: :mod:`kommo_callerid.phonebook.follow`), and :class:`MirrorFirst`,
which puts the mirror in front of Kommo's lookup for the notifier, ``/callerid`` and
``kommo-callerid lookup``."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.phonebook_feed import PhonebookFeed
from kommo_callerid.core.config import Config, PhonebookConfig
from kommo_callerid.core.log_soon import info_soon
from kommo_callerid.core.models import LookupResult, NotifyOutcome
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.phonebook_api import KommoDirectory
from kommo_callerid.phonebook.book import PhoneBook
from kommo_callerid.phonebook.follow import Leadership
from kommo_callerid.phonebook.sync import PhoneBookSync

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class Kommo(Protocol):
    """What the front needs of ``kommo.KommoClient``."""

    async def lookup(self, number: str, *, within: float | None = None) -> LookupResult: ...
    async def notify(
        self, number: str, users: Sequence[int] | None, *, within: float
    ) -> NotifyOutcome: ...


@dataclass
class PhoneBookParts:
    book: PhoneBook
    sync: PhoneBookSync
    #: With ``[cluster]``: the lease and the feed.
    leadership: Leadership | None = None

    async def run(self) -> None:
        """The sync (and with ``[cluster]`` the lease and the feed) until cancelled."""
        if self.leadership is None:
            await self.sync.run()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self.sync.run(), name="phonebook-sync")
            group.create_task(self.leadership.run(), name="phonebook-lease")


async def open_phonebook(
    config: Config,
    kommo: KommoClient,
    *,
    link: ClusterLink | None = None,
    may_sync: Callable[[], Awaitable[bool]] | None = None,
) -> PhoneBookParts | None:
    """The mirror (open) and its sync (not started), or None when ``[phonebook] enabled`` is
    false; raises :class:`~kommo_callerid.phonebook.store.MirrorError` when unusable.
    ``link``: the cluster's, when ``[cluster]`` is set."""
    section = config.phonebook
    if not section.enabled:
        return None
    book = PhoneBook(section.database, sync_interval=section.sync_interval)
    await book.open()
    if book.rebuilt:
        log.warning("phonebook.error", detail=f"the database was {book.rebuilt}", retry_in=None)
    directory = KommoDirectory(kommo.transport, rate_limit=config.kommo.rate_limit)
    if link is None:
        return PhoneBookParts(book, PhoneBookSync(book, directory, section, may_sync=may_sync))
    writing = asyncio.Lock()
    leadership = Leadership(PhonebookFeed(link), book, writing=writing)
    sync = PhoneBookSync(
        book,
        directory,
        section,
        may_sync=leadership.may_sync,
        publisher=leadership,
        writing=writing,
    )
    leadership.on_lead = sync.wake
    return PhoneBookParts(book, sync, leadership)


class MirrorFirst:
    """Lookups from the mirror first; Kommo for what it cannot answer. Notifications go
    straight to Kommo. The mirror's answers are not cached: the next sync may change them."""

    def __init__(
        self, kommo: Kommo, book: PhoneBook, config: PhonebookConfig, *, clock: Clock
    ) -> None:
        self._kommo = kommo
        self._book = book
        self._trust_unknown = config.trust_unknown
        self._clock = clock
        #: Lookups by who answered: ``phonebook`` or ``kommo`` (kept with the mirror).
        self.sources: Counter[str] = book.sources
        self._read_failed = False

    def reconfigure(self, config: PhonebookConfig) -> None:
        self._trust_unknown = config.trust_unknown

    async def lookup(self, number: str, *, within: float | None = None) -> LookupResult:
        answer = self.from_mirror(number)
        if answer is not None:
            return answer
        self.sources["kommo"] += 1
        return await self._kommo.lookup(number, within=within)

    def from_mirror(self, number: str) -> LookupResult | None:
        """The mirror's answer (logged as ``kommo.lookup``), or None: ask Kommo."""
        book = self._book
        if not book.complete:
            return None
        started = self._clock()
        digits = "".join(char for char in number if char.isdigit())
        try:
            found = book.find(digits)
        except sqlite3.Error as exc:  # the file went bad under us: Kommo answers meanwhile
            if not self._read_failed:
                self._read_failed = True
                log.error("phonebook.error", detail=f"lookup failed: {exc}", retry_in=None)
            return None
        if found is None and not (self._trust_unknown and book.fresh):
            return None
        entity, phone_entity = found if found is not None else (None, None)
        result = LookupResult(
            number=number,
            entity=entity,
            phone_entity=phone_entity,
            source="phonebook",
            cached=False,
            ms=round((self._clock() - started) * 1000, 3),
        )
        self.sources["phonebook"] += 1
        info_soon(  # after the notification this answer lets out (see log_soon)
            log,
            "kommo.lookup",
            entity_type=entity.type.value if entity else None,
            entity_id=entity.id if entity else None,
            name=entity.name if entity else None,
            responsible_user_id=result.responsible_user_id,
            cached=False,
            ms=result.ms,
            source="phonebook",
        )
        return result

    async def notify(
        self, number: str, users: Sequence[int] | None, *, within: float
    ) -> NotifyOutcome:
        return await self._kommo.notify(number, users, within=within)
