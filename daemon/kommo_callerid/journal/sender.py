"""The journal's sender: finished calls into the outbox, then from the outbox to Kommo.

``record`` (the daemon's ``journal_sink``) only hands the call to the writer
(:mod:`.writer`, its own task: writing never waits for a send); the loop sends, in batches,
the records that are due, once the outbox is open. Kommo's verdict per record is stored
before the next step: attached (maybe with a follow-up still to make: an incoming lead for an
unknown caller, a call-back task after a missed call), dropped (rejected, unknown, expired),
or tried again after a capped, jittered backoff until ``retain`` has passed. The loop sleeps
until a record is written or one falls due (with nothing due, it looks at the outbox once a
minute, for ``journal retry``).

Size: one loop from the outbox to Kommo (send in batches, follow up, stop), with its logs
and counters; what an answer does to a record is :mod:`.lifecycle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.core.hot_path import HotPath
from kommo_callerid.core.models import (
    CallbackTask,
    FinishedCall,
    JournalAnswer,
    JournalCall,
    LatencyHistogram,
)
from kommo_callerid.journal.clock import SteadyClock
from kommo_callerid.journal.entry import (
    DropReason,
    Followup,
    JournalEntry,
    State,
    as_kommo_call,
    build_entry,
)
from kommo_callerid.journal.lifecycle import (
    Step,
    after_call,
    after_follow_up,
    expire,
    retry_after,
    task_for,
    task_responsible,
)
from kommo_callerid.journal.lock import OutboxLock
from kommo_callerid.journal.outbox import HISTORY_SECONDS, AsyncOutbox
from kommo_callerid.journal.writer import OutboxWriter

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Records taken from the outbox per step (Kommo takes up to 50 calls per request).
BATCH_SIZE = 50
#: Seconds a finished call's record waits for others before it is sent (the daemon's
#: setting): calls that end together share a request. At 50 calls/s records travelled 1.4
#: to a request; Kommo allows 7 requests/s for everything, notifications first.
LINGER = 0.25
#: After an unexpected error (the database, a bug), the loop waits this long and goes on.
ERROR_PAUSE = 5.0
#: With nothing due, the outbox is still looked at this often: ``kommo-callerid journal
#: retry`` (another process) makes dropped records pending again.
RECHECK = 60.0
#: Sent and dropped records older than HISTORY_SECONDS are deleted this often.
PRUNE_INTERVAL = 3600.0


class CallLog(Protocol):
    """What the journal needs from Kommo (the daemon fills it with the Kommo client)."""

    async def add_calls(self, calls: Sequence[JournalCall]) -> list[JournalAnswer]: ...

    async def add_unsorted(
        self, call: JournalCall, *, pipeline_id: int, service_code: str
    ) -> JournalAnswer: ...

    async def add_task(self, task: CallbackTask) -> JournalAnswer: ...


class LinkResolver(Protocol):
    """Sets records' recording links just before they are sent (the daemon's recordings)."""

    async def settle(
        self, entries: list[JournalEntry]
    ) -> tuple[list[JournalEntry], list[JournalEntry]]:
        """(records to send now, links set; records to send later, ``next_try`` set)."""
        ...


@dataclass
class JournalStats:
    recorded: int = 0
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    unsorted: int = 0
    tasks: int = 0
    #: Seconds from a record written (the call's end) to Kommo accepting it.
    accept_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class JournalSender:
    def __init__(
        self,
        outbox: AsyncOutbox,
        kommo: CallLog,
        journal: JournalConfig,
        notify: NotifyConfig,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        links: LinkResolver | None = None,
        exclusive: bool = False,
        lock: OutboxLock | None = None,
        linger: float = 0.0,
        hot_path: HotPath | None = None,
    ) -> None:
        """``clock``: Unix time for ages and retries (``recorded_at``, ``next_try``,
        ``retain``); by default a :class:`SteadyClock`, which a step of the wall clock does
        not move. ``exclusive``: take the outbox's lock (:mod:`.lock`) before opening it;
        ``lock``: one taken already. ``linger``: seconds a record due may wait for others to
        share its request (see :data:`LINGER`). ``hot_path``: the calls on their way to a
        notification, which the bookkeeping after an answer lets pass (the notifier's)."""
        self.outbox = outbox
        self._links = links
        self._kommo = kommo
        self._journal = journal
        self._notify = notify
        self._clock = clock or SteadyClock()
        self._sleep = sleep
        self.stats = JournalStats()
        self.writer = OutboxWriter(outbox, self._written, exclusive=exclusive, lock=lock)
        self._wake = asyncio.Event()
        self._linger = linger
        self._hot_path = hot_path or HotPath()
        self._stop_asked = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._due_now_done = False
        #: When the oldest record written since the last look was recorded (None: none):
        #: it lingers before the look, which then finds it due (one trip to the database
        #: thread instead of two).
        self._fresh: float | None = None
        self._closed = False
        #: The last stop's count of records it could not write (lost with the process).
        self.lost = 0
        #: Told ``(call id, accepted)`` once a call is settled: Kommo has its record (True),
        #: or it is given up or left out (False). The cluster holds the call's journal claim
        #: until then, so a daemon that dies before it is taken over by another.
        self.on_settled: Callable[[str, bool], None] = lambda _call_id, _accepted: None

    @property
    def pending(self) -> int:
        """Records on disk that Kommo has not accepted yet (what is only in memory is
        :attr:`unwritten`: a crash loses it)."""
        return self.outbox.pending

    @property
    def unwritten(self) -> int:
        """Finished calls not yet on disk (the database is slow or unusable)."""
        return self.writer.unwritten

    @property
    def usable(self) -> bool:
        """False while the database cannot be opened or written (``/healthz`` 503)."""
        return self.writer.usable

    def reconfigure(self, journal: JournalConfig, notify: NotifyConfig) -> None:
        """SIGHUP: later records follow the new settings (the database stays)."""
        self._journal, self._notify = journal, notify

    def record(self, call: FinishedCall) -> None:
        """The daemon's journal sink: queue a finished call for the outbox (never blocks)."""
        entry = None  # switched off by a reload: what is pending still goes
        if self._journal.enabled:
            entry = build_entry(call, self._journal, self._notify, self._clock())
        if entry is None:
            self.on_settled(call.call_id, False)
            return
        if not self.writer.offer(entry):  # the database has failed for a while
            self._refused(
                [entry.call_id],
                f"the database is unusable and {self.writer.capacity} calls wait in memory",
            )

    async def open(self) -> None:
        """One attempt to open the outbox at start-up (a failure is reported and retried);
        :class:`~kommo_callerid.journal.lock.OutboxHeld` when another daemon holds it."""
        await self.writer.open()

    def start(self) -> None:
        self.writer.start()
        self._task = asyncio.create_task(self._run(), name="journal-sender")

    async def close(self, timeout: float) -> None:
        """Let a request in flight finish and write what arrived, both within ``timeout``;
        then say at error level how many records could not be written, and stop.
        A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._stop_asked.set()
        self._wake.set()
        _, self.lost = await asyncio.gather(self._stop_sending(timeout), self.writer.stop(timeout))
        if self.lost:
            log.error(
                "journal.unusable",
                detail=f"{self.lost} finished call(s) could not be written to "
                f"{self.outbox.path} before the stop and are lost: "
                f"{self.writer.problem or 'the database was too slow'}",
                lost=self.lost,
            )
        await self.outbox.close()
        self.writer.release()

    async def _stop_sending(self, timeout: float) -> None:
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while not self._stopping:
            if not self.writer.opened.is_set():  # the writer retries; it wakes us when open
                await self._idle(self._clock() + RECHECK)
                continue
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("journal.error", retry_in=ERROR_PAUSE)
                await self._idle(self._clock() + ERROR_PAUSE)

    async def _step(self) -> None:
        if not self._due_now_done:
            # Whatever waited for a retry when the daemon stopped is tried at once: a restart
            # is when an operator has fixed something.
            await self.outbox.due_now(self._clock())
            self._due_now_done = True
        if self._clock() >= self._next_prune:
            self._next_prune = self._clock() + PRUNE_INTERVAL
            await self.outbox.prune(self._clock() - HISTORY_SECONDS)
        self._wake.clear()
        await self._linger_fresh()
        due, next_try = self.outbox.due_or_next_try(self._clock(), BATCH_SIZE)
        if due and not self._stopping:
            wait = self._linger_left(due)
            if wait > 0:  # then look again: what arrived meanwhile goes in the same request
                await self._idle(self._clock() + wait, self._stop_asked)
                return
            await self._send(due)
        elif not self._stopping:
            recheck = self._clock() + RECHECK
            await self._idle(recheck if next_try is None else min(next_try, recheck))

    async def _linger_fresh(self) -> None:
        """Let the records just written wait ``linger`` for company before the outbox is
        read (a stop cuts it short)."""
        fresh, self._fresh = self._fresh, None
        if fresh is None or self._stopping:
            return
        wait = min(self._linger, fresh + self._linger - self._clock())
        if wait > 0:
            await self._idle(self._clock() + wait, self._stop_asked)

    def _written(self, written: list[JournalEntry], refused: list[str]) -> None:
        """The writer committed ``written`` (or the outbox just opened): send what is due."""
        self._wake.set()
        if written:
            oldest = min(entry.recorded_at for entry in written)
            self._fresh = oldest if self._fresh is None else min(self._fresh, oldest)
        for entry in written:
            self.stats.recorded += 1
            log.info(
                "journal.recorded",
                call_id=entry.call_id,
                caller=entry.phone,
                direction=str(entry.direction),
                status=int(entry.status),
                duration=entry.duration,
                answered_by=entry.answered_by,
            )
        self._refused(refused, f"the outbox holds {self.outbox.capacity} unsent records already")

    def _refused(self, call_ids: list[str], detail: str) -> None:
        for call_id in call_ids:
            self.on_settled(call_id, False)
            self._count_drop(DropReason.FULL)
            log.warning(
                "journal.dropped", call_id=call_id, reason=str(DropReason.FULL), detail=detail
            )

    def _linger_left(self, due: list[JournalEntry]) -> float:
        """Seconds the due records may still wait for company: none for a full batch, a
        retry, or a record older than ``linger`` (never more than ``linger``, whatever the
        clock did)."""
        if len(due) >= BATCH_SIZE or any(entry.attempts for entry in due):
            return 0.0
        oldest = min(entry.recorded_at for entry in due)
        return max(0.0, min(self._linger, oldest + self._linger - self._clock()))

    async def _idle(self, until: float, wake: asyncio.Event | None = None) -> None:
        """Sleep until ``wake`` is set (by default: a record arrives) or the clock reaches
        ``until``."""
        delay = until - self._clock()
        if delay <= 0:
            return
        waits: set[asyncio.Future[object]] = {
            asyncio.ensure_future((wake or self._wake).wait()),
            asyncio.ensure_future(self._sleep(delay)),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _send(self, due: list[JournalEntry]) -> None:
        now = self._clock()
        retain = self._journal.retain
        steps = [expire(e, retain) for e in due if now >= e.recorded_at + retain]
        live = [e for e in due if now < e.recorded_at + retain]
        calls = [entry for entry in live if entry.state is State.PENDING]
        if calls and self._links is not None:  # a file may appear a moment after the hangup
            calls, later = await self._links.settle(calls)
            steps.extend(Step(entry) for entry in later)
        if calls:
            steps.extend(await self._send_calls(calls))
        for entry in live:
            if entry.state is State.FOLLOWUP:
                steps.append(await self._follow_up(entry))
        await self._hot_path.quiet()  # the drop lines and the trip to the database thread
        for step in steps:
            if step.dropped is not None:
                self._log_drop(step.entry, *step.dropped)
        await self.outbox.update([step.entry for step in steps])
        for step in steps:  # the call is in Kommo (a task may follow), or given up
            done = step.entry
            if done.state is not State.PENDING and done.followup is not Followup.UNSORTED:
                self.on_settled(done.call_id, done.state is not State.DROPPED)

    async def _send_calls(self, entries: list[JournalEntry]) -> list[Step]:
        started = time.monotonic()
        source = self._journal.source
        answers = await self._kommo.add_calls([as_kommo_call(e, source) for e in entries])
        # The bookkeeping waits for the calls in flight (0.2 ms a slice for a batch of five):
        # a call that rang meanwhile is notified first (issue 22's latency tail).
        await self._hot_path.quiet()
        now = self._clock()
        # One backoff for the whole batch, so records that failed together retry together.
        backoff = retry_after(1 + min(entry.attempts for entry in entries))
        steps = [
            after_call(entry, answer, self._journal, now, backoff)
            for entry, answer in zip(entries, answers, strict=True)
        ]
        accepted = [s.entry for s in steps if s.entry.state in (State.SENT, State.FOLLOWUP)]
        await self._hot_path.quiet()
        if accepted:
            self._count_sent(accepted, now)
            log.info(
                "journal.sent",
                count=len(accepted),
                ms=round((time.monotonic() - started) * 1000, 1),
                calls=[
                    {"call_id": e.call_id, "entity_type": e.entity_type, "entity_id": e.entity_id}
                    for e in accepted
                ],
            )
        return steps

    async def _follow_up(self, entry: JournalEntry) -> Step:
        if entry.followup is Followup.UNSORTED:
            answer = await self._kommo.add_unsorted(
                as_kommo_call(entry, self._journal.source),
                pipeline_id=self._journal.pipeline_id,
                service_code=self._journal.source,
            )
        else:
            deadline = self._journal.missed_task_deadline
            answer = await self._kommo.add_task(task_for(entry, deadline))
        now = self._clock()
        step = after_follow_up(entry, answer, self._journal, now, retry_after(entry.attempts + 1))
        done = step.entry
        if done.lead_id is not None and entry.lead_id is None:
            self.stats.unsorted += 1
            self._count_sent([done], now)
            log.info("journal.unsorted", call_id=done.call_id, lead_id=done.lead_id)
        if done.task_id is not None and entry.task_id is None:
            self.stats.tasks += 1
            log.info(
                "journal.task_created",
                call_id=done.call_id,
                task_id=done.task_id,
                responsible_user_id=task_responsible(done),
            )
        return step

    def _count_sent(self, entries: list[JournalEntry], now: float) -> None:
        self.stats.sent += len(entries)
        for entry in entries:
            self.stats.accept_latency.observe(max(0.0, now - entry.recorded_at))

    def _log_drop(self, entry: JournalEntry, reason: DropReason, detail: str) -> None:
        self._count_drop(reason)
        log.warning(
            "journal.dropped",
            call_id=entry.call_id,
            caller=entry.phone,
            reason=str(reason),
            detail=detail,
            attempts=entry.attempts,
        )

    def _count_drop(self, reason: DropReason) -> None:
        self.stats.dropped[str(reason)] += 1
