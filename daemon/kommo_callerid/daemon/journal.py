"""The call journal's wiring: the sender filled with the Kommo client's transport (one rate
limit, lowest priority) and the outbox opened once at start-up.

Only a database another daemon holds stops the start (:class:`OutboxHeld`, exit 3): any other
problem (a missing directory, a full disk, SQLite busy in another process) leaves caller ID
running while the sender reports it and retries (see :mod:`kommo_callerid.journal.writer`)."""

from __future__ import annotations

from collections.abc import Callable

from kommo_callerid.core.config import Config
from kommo_callerid.core.hot_path import HotPath
from kommo_callerid.journal.clock import SteadyClock
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import LINGER, CallLog, JournalSender, LinkResolver
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal

#: Seconds the daemon's statements wait for another process's write lock (``journal retry``)
#: before the writer retries on its own schedule: a stop is not held up by SQLite's 5 s.
BUSY_TIMEOUT = 0.5


async def open_journal(
    config: Config,
    kommo: KommoClient,
    links: LinkResolver | None = None,
    *,
    gate: Callable[[CallLog], CallLog] | None = None,
    clock: Callable[[], float] | None = None,
    hot_path: HotPath | None = None,
) -> JournalSender | None:
    """The journal's sender (not started), or None when ``[journal] enabled`` is false;
    raises :class:`~kommo_callerid.journal.lock.OutboxHeld` when another daemon holds the
    database. ``gate`` (the cluster's) wraps its way to Kommo; ``clock``: the sender's (a
    :class:`SteadyClock` by default), which ``links`` must share: they compare its
    ``recorded_at`` with their own now. ``hot_path``: the notifier's calls in flight, which
    the sender's bookkeeping lets pass."""
    if not config.journal.enabled:
        return None
    outbox = AsyncOutbox(config.journal.database, busy_timeout=BUSY_TIMEOUT)
    api = KommoJournal(
        kommo.transport, timeout=config.kommo.timeout, rate_limit=config.kommo.rate_limit
    )
    sender = JournalSender(
        outbox,
        api if gate is None else gate(api),
        config.journal,
        config.notify,
        clock=clock or SteadyClock(),
        exclusive=True,
        links=links,
        linger=LINGER,
        hot_path=hot_path,
    )
    try:
        await sender.open()
    except BaseException:
        await outbox.close()
        raise
    return sender
