"""Turns call decisions into Kommo notifications for the right people, as early as each
recipient is known.

The DID's users are notified the moment the call is detected; the lookup runs beside that
and never delays a notification whose recipients are already known; every ringing leg adds
its agent; the everyone-fallback fires when nobody could be named. Each notification is its
own task, so one slow request never holds up another.

Work is bounded by design: at most :data:`MAX_PENDING_CALLS` calls may have Kommo work
(a lookup, a notification, a fallback timer) outstanding. A flood beyond that sheds the
oldest such calls (their tasks cancelled, counted as dropped with reason ``shed``, logged at
most every :data:`SHED_LOG_INTERVAL` s), so a new call is never stuck behind it.

The intake hands calls over in batches (:meth:`CallNotifier.end_batch`). A call is begun
(its ``call.incoming`` line, its tasks) when its batch ends; in a flood (more than
:data:`FLOOD_BATCH` calls begun in :data:`FLOOD_BEGIN_INTERVAL` s) once per such interval,
so the calls shed meanwhile never cost a task or a log line: they, and the ``call.skipped``
lines of the flood, are folded into one counted ``calls.folded`` line beside the shed line.
The call's log fields are bound inside its own tasks, never around the intake (a contextvar
binding per call was the largest part of the intake's cost).

Size: the contract's notification rules, and the hooks of the cluster's claim on each call
(its loop is in :mod:`.ownership`).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from structlog.contextvars import bind_contextvars

from kommo_callerid.calls.detector import (
    CallEnded,
    CallStarted,
    ChannelSkipped,
    Decision,
    LegRinging,
    SkipReason,
)
from kommo_callerid.calls.recipients import CallRecipients, for_pbx
from kommo_callerid.core.config import CallsConfig, NotifyConfig, Recipient
from kommo_callerid.core.hot_path import HotPath
from kommo_callerid.core.log_soon import info_soon, soon
from kommo_callerid.core.models import KommoError, LatencyHistogram, LookupResult, NotifyOutcome
from kommo_callerid.daemon.ownership import NOTIFY, ClaimPort, ClaimsPort, hold

log = structlog.get_logger(__name__)

#: How many handled call ids are remembered against re-notification after a reconnect.
SEEN_CALLS = 10_000
#: Calls that may wait for Kommo at once. At Kommo's 7 requests/s only ~300 notifications fit
#: in a 45 s notify_ttl: more waiting calls would only burn memory and then expire.
MAX_PENDING_CALLS = 1_000
#: Seconds between two log lines about shed calls (the counter is exact).
SHED_LOG_INTERVAL = 10.0
#: Calls begun in FLOOD_BEGIN_INTERVAL s beyond which it is a flood: the calls are then begun
#: at most every FLOOD_BEGIN_INTERVAL s (meanwhile they wait, and the oldest are shed unbegun).
FLOOD_BATCH = 100
FLOOD_BEGIN_INTERVAL = 0.5


class KommoPort(Protocol):
    """What the notifier needs of ``kommo.KommoClient``."""

    async def lookup(self, number: str, *, within: float | None = None) -> LookupResult: ...
    async def notify(
        self, number: str, users: Sequence[int] | None, *, within: float
    ) -> NotifyOutcome: ...


class TaskOwner:
    """Keeps a reference to every task it starts and can drain them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon.task_failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for running tasks; cancel the rest; return how many."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        leftovers = set(self._tasks)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers)
        return len(leftovers)


@dataclass
class NotifierStats:
    calls_incoming: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notifications_sent: int = 0
    #: Notifications given up, by reason: "ttl" (too late to be useful), "rejected" (4xx),
    #: "shed" (a call given up unsent because newer calls filled MAX_PENDING_CALLS).
    dropped: Counter[str] = field(default_factory=Counter)
    lookups_failed: int = 0
    #: Cluster: calls another daemon notified (it won the call's claim).
    claimed_elsewhere: int = 0
    #: Seconds from the call's Newchannel to Kommo accepting a notification for it.
    notify_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def notifications_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls_incoming": self.calls_incoming,
            "calls_skipped": {str(reason): n for reason, n in self.skipped.items()},
            "notifications_sent": self.notifications_sent,
            "notifications_dropped": self.notifications_dropped,
            "notifications_dropped_by_reason": dict(self.dropped),
            "lookups_failed": self.lookups_failed,
            "calls_claimed_elsewhere": self.claimed_elsewhere,
        }


@dataclass
class _ActiveCall:
    call: CallStarted
    recipients: CallRecipients
    fallback_timer: asyncio.Task[None] | None = None
    #: Cluster: False until this daemon won the call's claim; ringing legs wait meanwhile.
    owned: bool = True
    early_legs: list[LegRinging] = field(default_factory=list)
    ended: bool = False
    #: Lookups, timers and deliveries still running for this call.
    busy: int = 0
    #: Cluster: the call's claim, told about every delivery (for a daemon taking over).
    claim: ClaimPort | None = None
    #: Its Kommo work still running (lookup, notifications, fallback timer).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: Agents whose legs rang in the intake's current batch: one notification for them all.
    rung: list[int] = field(default_factory=list)

    def bind(self) -> None:
        """In one of the call's own tasks: its log lines carry the call (a task's context
        is its own copy, so nothing leaks to the intake)."""
        bind_contextvars(**self.fields())

    def fields(self) -> dict[str, str]:
        return _call_fields(self.call.call_id, self.call.number, self.call.pbx)


def _incoming_line(started: CallStarted) -> None:
    log.info(
        "call.incoming",
        **_call_fields(started.call_id, started.number, started.pbx),
        exten=started.did,
        channel=started.channel,
        name=started.caller_name,
    )


def _call_fields(call_id: str, caller: str, pbx: str) -> dict[str, str]:
    """A call line's fields; ``pbx`` only with several PBXs (one unnamed PBX logs as before)."""
    if pbx:
        return {"call_id": call_id, "caller": caller, "pbx": pbx}
    return {"call_id": call_id, "caller": caller}


class CallNotifier:
    def __init__(
        self,
        kommo: KommoPort,
        notify_config: NotifyConfig,
        calls_config: CallsConfig,
        tasks: TaskOwner,
        clock: Callable[[], float],
        *,
        claims: ClaimsPort | None = None,
        hot_path: HotPath | None = None,
    ) -> None:
        """``hot_path``: marks each call from its lookup to its notification, so that the
        journal's bookkeeping lets it pass (see :mod:`kommo_callerid.core.hot_path`)."""
        self._kommo = kommo
        self._claims = claims
        self._hot_path = hot_path or HotPath()
        #: Set at shutdown: claims are handed back rather than held to the calls' end.
        self._stopping = asyncio.Event()
        self._notify = notify_config
        self._ttl = calls_config.notify_ttl
        self._tasks = tasks
        self._clock = clock
        self._active: dict[str, _ActiveCall] = {}
        #: Calls already handled, so a call seen again after an AMI reconnect is not re-notified.
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: Calls with Kommo work outstanding, oldest first: the ones shed in a flood.
        self._pending: OrderedDict[str, _ActiveCall] = OrderedDict()
        #: Calls detected in the intake's current batch, not begun yet (oldest first).
        self._waiting: OrderedDict[str, _ActiveCall] = OrderedDict()
        #: Calls with ringing agents not notified yet (flushed when the batch ends).
        self._ringing: dict[str, _ActiveCall] = {}
        self._begin_timer: asyncio.TimerHandle | None = None
        #: Calls begun since ``_window_start`` (a flood: more than FLOOD_BATCH in one window).
        self._window_start = float("-inf")
        self._window_begun = 0
        #: ``clock()`` when a flood last held calls back (None: never): memory is released
        #: for a while after it (:mod:`.memory`).
        self.flooded_at: float | None = None
        self._shed_unlogged = 0
        self._shed_logged_at = float("-inf")
        #: Lines a flood folded: calls shed before their ``call.incoming``; skipped channels.
        self._folded_incoming = 0
        self._folded_skipped: Counter[str] = Counter()
        #: ``call.skipped`` lines in the intake's current batch (beyond FLOOD_BATCH: folded).
        self._batch_skips = 0
        self.stats = NotifierStats()

    def reconfigure(self, notify_config: NotifyConfig, calls_config: CallsConfig) -> None:
        """A reloaded ``[notify]``/``[calls]``: calls from now on follow it (SIGHUP)."""
        self._notify = notify_config
        self._ttl = calls_config.notify_ttl

    @property
    def active_calls(self) -> int:
        return len(self._active)

    @property
    def seen_calls(self) -> int:
        return len(self._seen)

    @property
    def pending_calls(self) -> int:
        return len(self._pending) + len(self._waiting)

    @property
    def calls_to_begin(self) -> bool:
        """Calls detected in this batch that :meth:`end_batch` would begin at once (no flood)."""
        return bool(self._waiting) and self._begin_timer is None

    @property
    def flooded(self) -> bool:
        return self._begin_timer is not None

    def end_batch(self) -> None:
        """The intake's batch is done: begin the calls it detected, at once unless more than
        FLOOD_BATCH calls were begun in the last FLOOD_BEGIN_INTERVAL s (a flood)."""
        self._batch_skips = 0
        self._notify_ringing()
        if not self._waiting:
            if self._folded_skipped:
                self.log_shed()
            return
        if self._begin_timer is not None:
            return
        now = self._clock()
        if now - self._window_start >= FLOOD_BEGIN_INTERVAL:
            self._window_start, self._window_begun = now, 0
        if self._window_begun + len(self._waiting) <= FLOOD_BATCH:
            self._window_begun += len(self._waiting)
            self._begin_waiting()
        else:
            loop = asyncio.get_running_loop()
            due = self._window_start + FLOOD_BEGIN_INTERVAL - now
            self.flooded_at = now
            self._begin_timer = loop.call_later(due, self._begin_waiting)

    def _begin_waiting(self) -> None:
        if self._begin_timer is not None:  # the flood's turn: a new window starts now
            self._begin_timer.cancel()
            self._begin_timer = None
            self._window_start, self._window_begun = self._clock(), len(self._waiting)
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for active in waiting:
            self._announce(active)
        self.log_shed()

    def handle(self, decision: Decision) -> None:
        match decision:
            case CallStarted():
                self._call_started(decision)
            case LegRinging():
                self._leg_ringing(decision)
            case ChannelSkipped():
                self._skipped(decision)
            case CallEnded():
                ended = self._active.pop(decision.call_id, None)
                if ended is not None:
                    ended.ended = True

    def _call_started(self, started: CallStarted) -> None:
        if started.call_id in self._seen:
            self._skipped(
                ChannelSkipped(
                    started.call_id,
                    SkipReason.DUPLICATE,
                    started.number,
                    started.channel,
                    started.did,
                )
            )
            return
        self._seen[started.call_id] = None
        if len(self._seen) > SEEN_CALLS:
            self._seen.popitem(last=False)
        # not owned until begun: its ringing legs wait in early_legs
        active = _ActiveCall(started, CallRecipients(self._notify), owned=False)
        self._active[started.call_id] = active
        self.stats.calls_incoming += 1
        self._waiting[started.call_id] = active
        self._shed_down_to(MAX_PENDING_CALLS)

    def _announce(self, active: _ActiveCall) -> None:
        started = active.call
        if self._claims is not None:
            self._tasks.spawn(self._claim(active), name=f"claim-{started.call_id}")
        else:
            active.owned = True
            self._begin(active)
        # after the call's first step (a warm lookup writes its notification): see log_soon
        soon(_incoming_line, started)

    def _begin(self, active: _ActiveCall) -> None:
        started = active.call
        did_users = for_pbx(self._notify.dids, started.pbx, started.did) or ()
        self._send(active, active.recipients.offer(Recipient.DID, did_users))
        self._spawn(active, self._lookup(active), f"lookup-{started.call_id}")
        if active.recipients.waits_for_ringing:
            active.fallback_timer = self._spawn(
                active, self._fallback_timer(active), f"fallback-{started.call_id}"
            )
        for leg in active.early_legs:  # the call may have ended since: they rang all the same
            self._ring(active, leg)
        active.early_legs.clear()
        self._notify_ringing()

    async def _claim(self, active: _ActiveCall) -> None:
        """Cluster: notify the call only if this daemon wins (or takes over) its claim."""
        assert self._claims is not None
        active.bind()
        claim = await self._claims.wait_claim(
            active.call.call_id,
            NOTIFY,
            until=lambda: self._time_left(active) <= 0 or self._stopping.is_set(),
        )
        if claim is None:
            self.stats.claimed_elsewhere += 1
            return
        users, everyone = await claim.recorded()
        if users or everyone:  # taken over from a daemon that died mid-call
            active.recipients.notified_before(users, everyone)
        active.claim, active.owned = claim, True
        self._begin(active)
        every = self._claims.ttl / 3
        done = lambda: active.busy == 0 and self._call_over(active)  # noqa: E731
        await hold(claim, done, every, self._stopping)

    def hand_back_calls(self) -> None:
        """Shutdown: stop watching calls and release the claims of unfinished ones."""
        self._stopping.set()
        if self._begin_timer is not None:
            self._begin_timer.cancel()
            self._begin_timer = None
        # a flood's calls not begun yet: nobody is left to notify them; counted, not logged
        self._folded_incoming += len(self._waiting)
        self._waiting.clear()
        self.log_shed(force=True)

    def _call_over(self, active: _ActiveCall) -> bool:
        return active.ended or self._time_left(active) <= 0

    def _spawn(
        self, active: _ActiveCall, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        """A task of this call: counted so the call's claim is held until it is done, and the
        call is pending (the oldest are shed in a flood) until all its tasks are done.

        Counted in a done callback, not a ``finally``: a task shed before it ever ran never
        enters its coroutine."""
        active.busy += 1
        task = self._tasks.spawn(coro, name=name)
        active.tasks.add(task)
        self._pending.setdefault(active.call.call_id, active)
        task.add_done_callback(lambda done: self._work_done(active, done))
        return task

    def _leg_ringing(self, leg: LegRinging) -> None:
        active = self._active.get(leg.call_id)
        if active is None:
            return
        if not active.owned:
            active.early_legs.append(leg)
            return
        self._ring(active, leg)

    def _ring(self, active: _ActiveCall, leg: LegRinging) -> None:
        user = for_pbx(self._notify.extensions, active.call.pbx, leg.extension)
        info_soon(  # in line behind the call's call.incoming
            log,
            "call.ringing",
            **active.fields(),
            extension=leg.extension,
            channel=leg.channel,
            user=user,
        )
        users = active.recipients.offer(Recipient.RINGING, [user])
        if users:
            active.rung.extend(users)
            self._ringing[active.call.call_id] = active

    def _notify_ringing(self) -> None:
        """One notification per call for the agents whose legs rang together (a queue rings
        several phones in one breath): one request instead of one per agent."""
        for active in self._ringing.values():
            users, active.rung = tuple(active.rung), []
            self._send(active, users)
        self._ringing.clear()

    def _skipped(self, skipped: ChannelSkipped) -> None:
        self.stats.skipped[skipped.reason] += 1
        self._batch_skips += 1
        if self._batch_skips > FLOOD_BATCH or self.flooded:
            self._folded_skipped[str(skipped.reason)] += 1
            return
        info_soon(  # in line with the call lines around it
            log,
            "call.skipped",
            **_call_fields(skipped.call_id, skipped.number, skipped.pbx),
            reason=str(skipped.reason),
            channel=skipped.channel,
            exten=skipped.exten,
        )

    async def _lookup(self, active: _ActiveCall) -> None:
        active.bind()
        with self._hot_path.call():
            try:
                result = await self._kommo.lookup(
                    active.call.number, within=self._time_left(active)
                )
            except KommoError:
                self.stats.lookups_failed += 1  # already logged as kommo.error
                responsible = None
            else:
                responsible = result.responsible_user_id
            users = active.recipients.offer(Recipient.RESPONSIBLE, [responsible])
            # In this task, not a new one: the notification goes out in this loop turn, not
            # behind the rest of the AMI read that waited for the call's first step.
            if active.recipients.lookup_finished():
                await self._deliver(active, None, bound=True)  # the everyone-fallback
            elif users:
                await self._deliver(active, users, bound=True)

    async def _fallback_timer(self, active: _ActiveCall) -> None:
        active.bind()
        elapsed = self._clock() - active.call.started_at
        await asyncio.sleep(max(0.0, self._notify.fallback_after - elapsed))
        if active.recipients.fallback_timer_fired():
            self._send_to_everyone(active)

    def _send(self, active: _ActiveCall, users: tuple[int, ...]) -> None:
        if users:
            self._spawn(active, self._deliver(active, users), f"notify-{active.call.call_id}")

    def _send_to_everyone(self, active: _ActiveCall) -> None:
        self._spawn(active, self._deliver(active, None), f"notify-all-{active.call.call_id}")

    def _work_done(self, active: _ActiveCall, task: asyncio.Task[None]) -> None:
        active.busy -= 1
        active.tasks.discard(task)
        if not active.tasks and self._pending.get(active.call.call_id) is active:
            del self._pending[active.call.call_id]

    def _shed_down_to(self, limit: int) -> None:
        """Give up the oldest pending calls (begun ones first, then the waiting ones, never
        begun: no task, no ``call.incoming``) until at most ``limit`` remain."""
        while len(self._pending) + len(self._waiting) > limit:
            if self._pending:
                call_id, active = self._pending.popitem(last=False)
                for task in active.tasks:
                    task.cancel()
            else:
                call_id, active = self._waiting.popitem(last=False)
                self._folded_incoming += 1
            self._active.pop(call_id, None)
            self._ringing.pop(call_id, None)
            self.stats.dropped["shed"] += 1
            self._shed_unlogged += 1
        if not self.flooded:
            self.log_shed()

    def log_shed(self, *, force: bool = False) -> None:
        """The shed calls and the folded lines since the last time, at most every
        SHED_LOG_INTERVAL s (``force``: now, at shutdown)."""
        if not force and self._clock() - self._shed_logged_at < SHED_LOG_INTERVAL:
            return
        if not (self._folded_incoming or self._folded_skipped or self._shed_unlogged):
            return
        if self._folded_incoming or self._folded_skipped:
            log.info(
                "calls.folded",
                incoming=self._folded_incoming,
                skipped=dict(self._folded_skipped),
                detail="a flood of calls: these were counted, not logged one by one",
            )
            self._folded_incoming = 0
            self._folded_skipped = Counter()
        if self._shed_unlogged:
            log.warning(
                "kommo.notify_dropped",
                reason="shed",
                calls=self._shed_unlogged,
                pending_cap=MAX_PENDING_CALLS,
                detail="a flood of calls: the oldest still waiting for Kommo were given up",
            )
            self._shed_unlogged = 0
        self._shed_logged_at = self._clock()

    async def _deliver(
        self, active: _ActiveCall, users: tuple[int, ...] | None, *, bound: bool = False
    ) -> None:
        """``bound``: run by a task of the call that bound its fields already."""
        if not bound:
            active.bind()
        outcome = await self._kommo.notify(
            active.call.number, users, within=self._time_left(active)
        )
        if outcome is NotifyOutcome.SENT:
            if active.claim is not None:
                await active.claim.record(users)
            self.stats.notifications_sent += 1
            self.stats.notify_latency.observe(self._clock() - active.call.started_at)
        else:
            self.stats.dropped[str(outcome)] += 1

    def _time_left(self, active: _ActiveCall) -> float:
        """Seconds until the call's notification stops being useful (``notify_ttl``)."""
        return self._ttl - (self._clock() - active.call.started_at)
