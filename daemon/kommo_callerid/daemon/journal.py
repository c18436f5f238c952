"""The call journal's wiring: the outbox opened at start-up (unusable: exit 3 with a sentence)
and the sender filled with the Kommo client's transport (one rate limit, lowest priority)."""

from __future__ import annotations

from kommo_callerid.core.config import Config
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import JournalSender, LinkResolver
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal


async def open_journal(
    config: Config, kommo: KommoClient, links: LinkResolver | None = None
) -> JournalSender | None:
    """The journal's sender (not started), or None when ``[journal] enabled`` is false;
    raises :class:`~kommo_callerid.journal.outbox.OutboxError` when the database is unusable."""
    if not config.journal.enabled:
        return None
    outbox = AsyncOutbox(config.journal.database)
    await outbox.open()
    api = KommoJournal(
        kommo.transport, timeout=config.kommo.timeout, rate_limit=config.kommo.rate_limit
    )
    return JournalSender(outbox, api, config.journal, config.notify, links=links)
