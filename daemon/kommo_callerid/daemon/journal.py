"""The call journal's wiring: the outbox opened at start-up (unusable: exit 3 with a sentence)
and the sender filled with the Kommo client's transport (one rate limit, lowest priority)."""

from __future__ import annotations

from collections.abc import Callable

from kommo_callerid.core.config import Config
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import CallLog, JournalSender
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal


async def open_journal(
    config: Config, kommo: KommoClient, gate: Callable[[CallLog], CallLog] | None = None
) -> JournalSender | None:
    """The journal's sender (not started), or None when ``[journal] enabled`` is false;
    raises :class:`~kommo_callerid.journal.outbox.OutboxError` when the database is unusable.
    ``gate`` (the cluster's) wraps its way to Kommo."""
    if not config.journal.enabled:
        return None
    outbox = AsyncOutbox(config.journal.database)
    await outbox.open()
    api = KommoJournal(
        kommo.transport, timeout=config.kommo.timeout, rate_limit=config.kommo.rate_limit
    )
    calls: CallLog = api if gate is None else gate(api)
    return JournalSender(outbox, calls, config.journal, config.notify)
