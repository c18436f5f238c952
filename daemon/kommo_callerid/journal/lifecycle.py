"""What Kommo's answer does to a record (pure: no I/O, no logging).

A record is ``pending`` until ``POST /api/v4/calls`` takes it; then ``sent``, or ``followup``
while an incoming lead (an unknown caller, ``unknown = "unsorted"``) or a call-back task (a
missed call, ``missed_task``) is still to make; ``dropped`` when Kommo refuses it, when no
entity has the number and ``unknown = "skip"``, or when ``retain`` passes. Anything else
(outage, 5xx, 429, a token) waits for a capped, jittered backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from kommo_callerid.core.config import JournalConfig
from kommo_callerid.core.models import (
    CallbackTask,
    CallDirection,
    EntityType,
    JournalAnswer,
    JournalVerdict,
)
from kommo_callerid.journal.entry import DropReason, Followup, JournalEntry, State

RETRY_BASE = 2.0
RETRY_CAP = 300.0


@dataclass(frozen=True, slots=True)
class Step:
    """The record after an answer, and what was given up on the way (to log)."""

    entry: JournalEntry
    dropped: tuple[DropReason, str] | None = None


def retry_after(attempts: int) -> float:
    """Full-jitter backoff after ``attempts`` failed tries: 1-2 s, 2-4 s ... capped at 5 min."""
    ceiling = min(RETRY_CAP, RETRY_BASE * 2 ** max(0, attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


def after_call(
    entry: JournalEntry, answer: JournalAnswer, journal: JournalConfig, now: float, backoff: float
) -> Step:
    """The record after Kommo's answer to ``POST /api/v4/calls``."""
    tried = entry.attempts + 1
    if answer.verdict is JournalVerdict.ATTACHED:
        task = journal.missed_task and entry.missed and answer.entity_id is not None
        return Step(
            replace(
                entry,
                state=State.FOLLOWUP if task else State.SENT,
                followup=Followup.TASK if task else None,
                entity_type=str(answer.entity_type) if answer.entity_type else None,
                entity_id=answer.entity_id,
                entity_responsible_id=answer.responsible_user_id,
                attempts=tried,
                sent_at=now,
                next_try=now,
            )
        )
    if answer.verdict is JournalVerdict.UNKNOWN:
        if journal.unknown == "unsorted" and entry.direction is CallDirection.INBOUND:
            unsorted = replace(
                entry, state=State.FOLLOWUP, followup=Followup.UNSORTED, attempts=tried
            )
            return Step(replace(unsorted, next_try=now))
        return drop(entry, DropReason.UNKNOWN, answer.detail or "no contact or company has it")
    if answer.verdict is JournalVerdict.REJECTED:
        return drop(entry, DropReason.REJECTED, answer.detail)
    return later(entry, answer.detail, now, backoff, journal.retain)


def after_follow_up(
    entry: JournalEntry, answer: JournalAnswer, journal: JournalConfig, now: float, backoff: float
) -> Step:
    """The record after Kommo's answer to its incoming lead or call-back task."""
    if answer.verdict is JournalVerdict.RETRY:
        return later(entry, answer.detail, now, backoff, journal.retain)
    if answer.verdict is not JournalVerdict.ATTACHED:
        if entry.followup is Followup.UNSORTED:
            return drop(entry, DropReason.REJECTED, answer.detail)
        # The call is in Kommo already: only the task is lost; the record stays sent.
        return Step(
            replace(
                entry, state=State.SENT, followup=None, detail=f"task refused: {answer.detail}"
            ),
            (DropReason.REJECTED, f"call-back task refused: {answer.detail}"),
        )
    if entry.followup is Followup.UNSORTED:
        lead = answer.entity_id
        return Step(
            replace(
                entry,
                state=State.SENT,
                followup=None,
                entity_type=str(EntityType.LEAD),
                entity_id=lead,
                lead_id=lead,
                sent_at=now,
            )
        )
    return Step(replace(entry, state=State.SENT, followup=None, task_id=answer.entity_id))


def expire(entry: JournalEntry, retain: float) -> Step:
    """Give up a record ``retain`` seconds after it was written."""
    detail = f"not accepted within retain ({retain:g} s)"
    if entry.detail:
        detail = f"{detail}; last answer: {entry.detail}"
    if entry.state is State.FOLLOWUP and entry.followup is Followup.TASK:
        kept = replace(entry, state=State.SENT, followup=None, detail=f"task expired: {detail}")
        return Step(kept, (DropReason.EXPIRED, f"call-back task: {detail}"))
    return drop(entry, DropReason.EXPIRED, detail)


def drop(entry: JournalEntry, reason: DropReason, detail: str) -> Step:
    dropped = replace(
        entry,
        state=State.DROPPED,
        followup=None,
        reason=str(reason),
        detail=detail,
        attempts=entry.attempts + 1,
    )
    return Step(dropped, (reason, detail))


def later(entry: JournalEntry, detail: str, now: float, backoff: float, retain: float) -> Step:
    """Try again after ``backoff``, but not past the moment ``retain`` gives it up."""
    next_try = min(now + backoff, entry.recorded_at + retain)
    return Step(replace(entry, attempts=entry.attempts + 1, next_try=next_try, detail=detail))


def task_for(entry: JournalEntry, deadline: float) -> CallbackTask:
    """The call-back task for a missed call, due ``deadline`` seconds after it ended."""
    return CallbackTask(
        uniq=entry.call_id,
        entity_type=EntityType(entry.entity_type or EntityType.CONTACT),
        entity_id=entry.entity_id or 0,
        responsible_user_id=task_responsible(entry),
        complete_till=int(entry.ended_at + deadline),
        text=f"Call back {entry.phone}: missed call ({entry.result})",
    )


def task_responsible(entry: JournalEntry) -> int | None:
    """The attached entity's responsible user (Kommo said), else the record's own."""
    if entry.entity_responsible_id is not None:
        return entry.entity_responsible_id
    return entry.responsible_user_id
