"""One-shot commands that use the daemon's Kommo client once: ``lookup`` and ``authorize``."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from kommo_callerid.core.config import Config
from kommo_callerid.core.models import Entity, KommoError
from kommo_callerid.daemon.cluster import cluster_if_reachable, publish_tokens
from kommo_callerid.daemon.phonebook import MirrorFirst
from kommo_callerid.kommo.auth import TokenFileUnusable
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.phonebook.book import PhoneBook
from kommo_callerid.phonebook.store import MirrorError

#: Learns the OAuth tokens as they arrive (the log scrubber's ``remember``).
SecretSink = Callable[[str], None] | None


async def authorize_once(config: Config, code: str, *, on_secret: SecretSink = None) -> None:
    """Trade an OAuth authorisation code for the first token pair, saved to ``token_file``;
    raises :class:`KommoError` (already logged) when Kommo refuses."""
    async with KommoClient(config.kommo, config.cache, on_secret=on_secret, warm=False) as kommo:
        await kommo.authorize(code)
    if config.cluster.enabled:
        await publish_tokens(config)  # the daemons of the cluster read the pair from Redis


async def lookup_once(
    config: Config, number: str, *, on_secret: SecretSink = None
) -> dict[str, Any]:
    """One lookup through the daemon's own client (``kommo-callerid lookup``); with a
    reachable ``[cluster]``, through its rate limit, cache and OAuth pair too."""
    async with AsyncExitStack() as stack:
        cluster = await cluster_if_reachable(config)
        if cluster is not None:
            stack.push_async_callback(cluster.close)
        extra = cluster.kommo_parts() if cluster is not None else {}
        kommo = await stack.enter_async_context(
            KommoClient(config.kommo, config.cache, on_secret=on_secret, warm=False, **extra)
        )
        mirror = await _mirror_first(config, kommo, stack)
        try:
            result = mirror.from_mirror(number) if mirror is not None else None
            if result is None:
                await kommo.ensure_credentials()
                result = await kommo.lookup(number)
        except TokenFileUnusable:
            raise  # an operator's mistake on this host: the command exits 3
        except KommoError as exc:
            return {"error": exc.detail, "status": exc.status, "endpoint": exc.endpoint}
    return {
        "found": result.entity is not None,
        "entity": _entity_dict(result.entity),
        "phone_entity": _entity_dict(result.phone_entity),
        "responsible_user_id": result.responsible_user_id,
        "source": result.source,
        "cached": result.cached,
        "ms": round(result.ms, 1),
    }


async def _mirror_first(
    config: Config, kommo: KommoClient, stack: AsyncExitStack
) -> MirrorFirst | None:
    """With ``[phonebook]``, the daemon's mirror read as it is (no mirror yet: Kommo only)."""
    section = config.phonebook
    if not section.enabled:
        return None
    book = PhoneBook(section.database, sync_interval=section.sync_interval)
    try:
        await book.open(read_only=True)
    except MirrorError:
        return None
    stack.push_async_callback(book.close)
    return MirrorFirst(kommo, book, section, clock=time.monotonic)


def _entity_dict(entity: Entity | None) -> dict[str, Any] | None:
    if entity is None:
        return None
    return {
        "type": str(entity.type),
        "id": entity.id,
        "name": entity.name,
        "responsible_user_id": entity.responsible_user_id,
    }
