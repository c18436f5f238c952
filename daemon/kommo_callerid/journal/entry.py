"""One journal record, and how a finished call becomes one (pure: no I/O).

The record carries everything Kommo will be told, decided when the call ends (who is the
responsible user, the recording's link), so a record sent after a restart or a
configuration reload says what was true for that call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from kommo_callerid.calls.recipients import for_pbx
from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.core.models import CallDirection, CallStatus, FinishedCall, JournalCall

T = TypeVar("T")


class State(StrEnum):
    PENDING = "pending"  # not yet accepted by Kommo
    FOLLOWUP = "followup"  # accepted; an incoming lead or a call-back task is still to make
    SENT = "sent"  # done
    DROPPED = "dropped"  # given up: see reason and detail


class Followup(StrEnum):
    UNSORTED = "unsorted"
    TASK = "task"


class DropReason(StrEnum):
    REJECTED = "rejected"  # Kommo refused the record
    EXPIRED = "expired"  # not accepted within [journal] retain
    UNKNOWN = "unknown"  # no contact or company has the number, and unknown = "skip"
    FULL = "full"  # the outbox held its maximum of unsent records


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A row of the outbox. ``id`` is 0 until the row is written."""

    call_id: str
    pbx: str
    linkedid: str
    uniqueid: str
    direction: CallDirection
    phone: str
    started_at: float
    duration: int
    status: CallStatus
    answered_by: str | None
    extension: str | None
    did: str | None
    result: str
    responsible_user_id: int | None
    link: str
    #: Unix time the record was written: ``retain`` counts from here.
    recorded_at: float
    id: int = 0
    state: State = State.PENDING
    attempts: int = 0
    #: Unix time of the next attempt.
    next_try: float = 0.0
    entity_type: str | None = None
    entity_id: int | None = None
    #: The attached entity's responsible user, when Kommo said (the call-back task's owner).
    entity_responsible_id: int | None = None
    reason: str | None = None
    detail: str = ""
    sent_at: float | None = None
    followup: Followup | None = None
    lead_id: int | None = None
    task_id: int | None = None
    #: The call's Uniqueids, most likely first (its recording is named by one of them).
    uniqueids: tuple[str, ...] = ()
    #: The file MixMonitor wrote (``MIXMONITOR_FILENAME``), when Asterisk said; "" if not.
    recording_file: str = ""

    @property
    def missed(self) -> bool:
        return self.direction is CallDirection.INBOUND and self.status is not CallStatus.ANSWERED

    @property
    def ended_at(self) -> float:
        return self.started_at + self.duration


def build_entry(
    call: FinishedCall, journal: JournalConfig, notify: NotifyConfig, now: float
) -> JournalEntry | None:
    """The record for ``call``, or None when ``[journal] directions`` leaves it out."""
    if str(call.direction) not in journal.directions:
        return None
    return JournalEntry(
        call_id=call.call_id,
        pbx=call.pbx,
        linkedid=call.linkedid,
        uniqueid=call.uniqueid,
        direction=call.direction,
        phone=call.phone,
        started_at=call.started_at,
        duration=call.duration,
        status=call.status,
        answered_by=call.answered_by,
        extension=call.extension,
        did=call.did,
        result=call.result,
        responsible_user_id=responsible_user(call, notify),
        link=recording_link(journal.recording_url, call),
        recorded_at=now,
        next_try=now,
        uniqueids=call.uniqueids,
        recording_file=call.recording_file,
    )


def responsible_user(call: FinishedCall, notify: NotifyConfig) -> int | None:
    """Inbound: the user of the extension that answered, else the DID's first user.
    Outbound: the user of the calling extension (a click-to-call: the user who clicked).
    A ``NAME/KEY`` key beats a bare one."""
    if call.user_id is not None:
        return call.user_id
    if call.direction is CallDirection.OUTBOUND:
        return _by_key(notify.extensions, call.pbx, call.extension)
    answered = _by_key(notify.extensions, call.pbx, call.answered_by)
    if answered is not None:
        return answered
    users = _by_key(notify.dids, call.pbx, call.did)
    return users[0] if users else None


def _by_key(table: dict[str, T], pbx: str, key: str | None) -> T | None:
    return for_pbx(table, pbx, key) if key else None


def recording_link(template: str, call: FinishedCall) -> str:
    """``recording_url`` with {linkedid} {uniqueid} {pbx} {date} filled in ("" when unset)."""
    if not template:
        return ""
    values = {
        "linkedid": call.linkedid,
        "uniqueid": call.uniqueid,
        "pbx": call.pbx,
        "date": time.strftime("%Y/%m/%d", time.localtime(call.started_at)),
    }
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError):
        return template  # an unknown placeholder: the config check reports it; keep the text


def as_kommo_call(entry: JournalEntry, source: str) -> JournalCall:
    return JournalCall(
        uniq=entry.call_id,
        direction=entry.direction,
        phone=entry.phone,
        duration=entry.duration,
        status=entry.status,
        result=entry.result,
        responsible_user_id=entry.responsible_user_id,
        created_at=int(entry.started_at),
        link=entry.link,
        source=source,
    )
