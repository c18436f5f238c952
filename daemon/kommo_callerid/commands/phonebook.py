"""``kommo-callerid phonebook [--sync] [--json]``: the local phone book at a glance.

``--sync`` runs one full pass now. While a daemon runs it holds the mirror's writer lock:
the command then asks that daemon for the pass (a mark in the file its sync loop reads at
its next round) and waits for it, so the requests go through the daemon's rate limit share.
With no daemon running, the command syncs itself (through the cluster's rate limit when a
``[cluster]`` is reachable).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from kommo_callerid.core.config import Config
from kommo_callerid.core.models import KommoError
from kommo_callerid.daemon.cluster import cluster_if_reachable
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.phonebook_api import KommoDirectory
from kommo_callerid.phonebook.book import PhoneBook, PhoneBookBusy
from kommo_callerid.phonebook.store import Mirror, MirrorError
from kommo_callerid.phonebook.sync import PhoneBookSync

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 3
#: How long ``--sync`` waits for a running daemon's full pass.
DAEMON_WAIT = 900.0
POLL = 0.5


def run(config: Config, *, sync: bool, as_json: bool) -> int:
    section = config.phonebook
    if not section.enabled:
        print("kommo-callerid: [phonebook] enabled is false: there is no phone book.")
        return EXIT_CONFIG
    if sync:
        try:
            code = asyncio.run(_sync(config))
        except MirrorError as exc:
            print(f"kommo-callerid: {exc}")
            return EXIT_CONFIG
        if code != EXIT_OK:
            return code
    try:
        status = asyncio.run(_status(config))
    except MirrorError as exc:
        print(f"kommo-callerid: {exc}")
        return EXIT_CONFIG
    print(json.dumps(status) if as_json else _text(status))
    return EXIT_OK


async def _status(config: Config) -> dict[str, Any]:
    book = PhoneBook(config.phonebook.database, sync_interval=config.phonebook.sync_interval)
    await book.open(read_only=True)
    try:
        age = book.age()
        return {
            "database": str(book.path),
            "entries": dict(book.counts),
            "complete": book.complete,
            "fresh": book.fresh,
            "last_sync": _iso(book.last_sync),
            "last_sync_age_seconds": None if age is None else round(age, 1),
            "last_full_sync": _iso(book.last_full),
            "lookups": book.recorded_sources,
        }
    finally:
        await book.close()


async def _sync(config: Config) -> int:
    book = PhoneBook(config.phonebook.database, sync_interval=config.phonebook.sync_interval)
    try:
        await book.open()
    except PhoneBookBusy:
        return await _ask_daemon(config)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(book.close)
        cluster = await cluster_if_reachable(config)
        if cluster is not None:
            stack.push_async_callback(cluster.close)
        extra = cluster.kommo_parts() if cluster is not None else {}
        kommo = await stack.enter_async_context(KommoClient(config.kommo, config.cache, **extra))
        directory = KommoDirectory(kommo.transport, rate_limit=config.kommo.rate_limit)
        try:
            await kommo.ensure_credentials()
            await PhoneBookSync(book, directory, config.phonebook).sync_once(full=True)
        except KommoError as exc:
            print(f"kommo-callerid: the sync failed: {exc.endpoint}: {exc.detail}")
            return EXIT_FAILURE
    return EXIT_OK


async def _ask_daemon(config: Config) -> int:
    """Mark a full pass as wanted; the running daemon's sync runs it at its next round."""
    path = config.phonebook.database
    asked = time.time()
    mirror = Mirror.open(path, create=False)
    try:
        mirror.set_meta({"full_requested": str(asked)})
        give_up = time.monotonic() + DAEMON_WAIT
        while time.monotonic() < give_up:
            last_full = mirror.get_meta("last_full")
            if last_full is not None and float(last_full) >= asked:
                return EXIT_OK
            await asyncio.sleep(POLL)
    finally:
        mirror.close()
    print("kommo-callerid: the running daemon has not finished the full pass yet; see its log.")
    return EXIT_FAILURE


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _text(status: dict[str, Any]) -> str:
    entries = status["entries"]
    age = status["last_sync_age_seconds"]
    state = "fresh" if status["fresh"] else ("stale" if status["complete"] else "incomplete")
    lookups = status["lookups"]
    return "\n".join(
        [
            f"Phone book {status['database']}: {state}",
            "  entries: "
            + ", ".join(f"{entries.get(k, 0)} {k}" for k in ("contacts", "companies", "leads"))
            + f", {entries.get('customers', 0)} customers",
            f"  last sync: {status['last_sync'] or 'never'}"
            + (f" ({age} s ago)" if age is not None else ""),
            f"  last full pass: {status['last_full_sync'] or 'never'}",
            f"  lookups answered (running daemon): {lookups.get('phonebook', 0)} from the "
            f"phone book, {lookups.get('kommo', 0)} by Kommo",
        ]
    )
