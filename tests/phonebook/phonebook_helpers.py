"""Shared by the phone book's tests: a Kommo client, a mirror and its sync against the fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from kommo_callerid.core.config import CacheConfig, KommoConfig, PhonebookConfig
from kommo_callerid.core.models import Entity
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.parse import parse_by_phone
from kommo_callerid.kommo.phonebook_api import KommoDirectory
from kommo_callerid.phonebook.book import PhoneBook
from kommo_callerid.phonebook.sync import PhoneBookSync
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.kommo_data import KommoDataset, search_by_phone

LIST_PATHS = tuple(f"/api/v4/{kind}" for kind in ("contacts", "companies", "leads", "customers"))


@dataclass
class Synced:
    kommo: KommoClient
    book: PhoneBook
    sync: PhoneBookSync


def list_requests(fake: FakeKommo) -> int:
    return sum(fake.requests_to(path) for path in LIST_PATHS)


def by_phone(data: KommoDataset, number: str) -> tuple[Entity, Entity | None] | None:
    item = search_by_phone(data, number)
    if item is None:
        return None
    entity, phone_entity = parse_by_phone({"_embedded": {"items": [item]}})
    assert entity is not None
    return entity, phone_entity


def now() -> int:
    return int(time.time())


def touched(data: KommoDataset, **changes: object) -> KommoDataset:
    return replace(data, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def synced(
    fake: FakeKommo, database: Path, *, interval: float = 1.0, run: bool = True
) -> AsyncIterator[Synced]:
    """A client, the mirror at ``database`` and its sync (running when ``run``)."""
    config = PhonebookConfig(enabled=True, database=database, sync_interval=interval)
    kommo_config = KommoConfig(base_url=fake.base_url, access_token=fake.token, rate_limit=50)
    async with KommoClient(kommo_config, CacheConfig()) as kommo:
        book = PhoneBook(database, sync_interval=interval)
        await book.open()
        directory = KommoDirectory(kommo.transport, rate_limit=50)
        sync = PhoneBookSync(book, directory, config)
        task = asyncio.create_task(sync.run()) if run else None
        try:
            yield Synced(kommo, book, sync)
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await book.close()
