"""What Kommo's answers do to a record (pure)."""

from __future__ import annotations

from dataclasses import replace

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.core.models import CallStatus, EntityType, JournalAnswer, JournalVerdict
from kommo_callerid.journal.entry import DropReason, Followup, JournalEntry, State, build_entry
from kommo_callerid.journal.lifecycle import (
    RETRY_CAP,
    after_call,
    after_follow_up,
    expire,
    retry_after,
    task_for,
)

from support import finished_call

NOW = 1_780_000_100.0
TASKS = JournalConfig(missed_task=True, retain=600.0)


def missed() -> JournalEntry:
    call = finished_call("11.1", "+14155550199", status=CallStatus.NO_ANSWER)
    entry = build_entry(call, TASKS, NotifyConfig(), NOW)
    assert entry is not None
    return entry


def test_backoff_grows_jittered_and_capped() -> None:
    assert 1.0 <= retry_after(1) <= 2.0
    assert 4.0 <= retry_after(3) <= 8.0
    assert all(RETRY_CAP / 2 <= retry_after(n) <= RETRY_CAP for n in range(10, 60))


def test_a_missed_call_waits_for_its_task_and_a_refused_task_keeps_the_call_sent() -> None:
    lead = JournalAnswer("11.1", JournalVerdict.ATTACHED, EntityType.LEAD, 3001, 77)
    step = after_call(missed(), lead, TASKS, NOW, 1.0)
    assert step.dropped is None
    entry = step.entry
    assert (entry.state, entry.followup, entry.entity_id) == (State.FOLLOWUP, Followup.TASK, 3001)
    task = task_for(entry, 3600.0)
    assert (task.entity_type, task.responsible_user_id) == (EntityType.LEAD, 77)
    refused = JournalAnswer("11.1", JournalVerdict.REJECTED, detail="no rights")
    after = after_follow_up(entry, refused, TASKS, NOW, 1.0)
    assert after.entry.state is State.SENT and after.entry.followup is None
    assert after.dropped == (DropReason.REJECTED, "call-back task refused: no rights")


def test_retries_never_outlive_retain_and_then_expire() -> None:
    down = JournalAnswer("11.1", JournalVerdict.RETRY, detail="503")
    step = after_call(missed(), down, TASKS, NOW + 590.0, 300.0)
    assert step.entry.next_try == NOW + 600.0 and step.entry.attempts == 1
    gone = expire(step.entry, TASKS.retain)
    assert gone.entry.state is State.DROPPED and gone.dropped is not None
    assert gone.dropped[0] is DropReason.EXPIRED and "last answer: 503" in gone.dropped[1]
    waiting_task = replace(step.entry, state=State.FOLLOWUP, followup=Followup.TASK)
    assert expire(waiting_task, TASKS.retain).entry.state is State.SENT
