"""The demo as a person reads it: one line per call, built from the daemon's structured log
events (a structlog processor), never by parsing rendered text; then a summary table.

A call's line is printed once its story is told: when the next call arrives or the demo ends
(notifications for one call come from several sources, a few milliseconds apart). When the
call journal logs finished calls, an "ended" line follows for each.

Size: every log event the story tells, and the orders they may come in, read in one place.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

import phonenumbers
import structlog
from structlog.typing import EventDict, WrappedLogger

#: Why a channel was not a caller to notify, in words (``duplicate``: another leg of a call
#: already known, which is no news).
SKIPPED = {
    "anonymous": "skipped: withheld number",
    "internal": "skipped: internal call",
    "not_inbound": "skipped: not an inbound call",
}
ARROW = "→"
#: Why the demo's unknown caller ends up in Kommo at all: the default would not log it.
UNSORTED_NOTE = (
    'only because the demo sets [journal] unknown = "unsorted"; with the default "skip" '
    "a caller Kommo does not know is not logged"
)
#: Kommo's call_status codes (core.models.CallStatus) and names, in words.
STATUS_WORDS = {
    "4": "answered",
    "answered": "answered",
    "5": "invalid number",
    "6": "missed",
    "no_answer": "missed",
    "7": "busy",
}


@dataclass(slots=True)
class CallStory:
    caller: str
    started: float
    entity: str = ""
    users: list[int | None] = field(default_factory=list)
    last_notified: float | None = None
    dropped: list[str] = field(default_factory=list)
    ended: str = ""
    printed: bool = False


@dataclass(slots=True)
class Tally:
    detected: int = 0
    found: int = 0
    cached: int = 0
    notifications: int = 0
    users: set[int | None] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    problems: int = 0
    journal_recorded: int = 0
    journal_sent: int = 0
    journal_dropped: int = 0


class DemoView:
    """A structlog processor: it reads every event and drops it from the raw output."""

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._out = out
        self._clock = clock
        self._calls: dict[str, CallStory] = {}
        self._unsent: list[str] = []  # call ids recorded in the journal, not yet sent
        self._sent_early: dict[str, bool] = {}  # sent before their journal.recorded line
        #: Sent but attached to nothing (an unknown caller): the incoming lead is to come.
        self._lead_pending: list[str] = []
        self.tally = Tally()

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        handler = self._handlers.get(str(event_dict.get("event")))
        if handler is not None:
            handler(self, event_dict)
        elif event_dict.get("level") in ("warning", "error", "critical"):
            self._problem(event_dict)
        raise structlog.DropEvent

    def say(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)

    def finish(self) -> None:
        """Print what is still untold, then the summary."""
        self._flush()
        for call_id in self._unsent:
            self._print_ended(call_id, "pending")
        self._unsent.clear()
        for call_id in self._lead_pending:
            self._print_ended(call_id, "sent; its incoming lead is still to come")
        self._lead_pending.clear()
        self.say()
        self.say("Summary")
        for label, value in summary_rows(self.tally):
            self.say(f"  {label:<24} {value}")

    # -- events -------------------------------------------------------------------------

    def _connected(self, event: EventDict) -> None:
        self.say(f"The daemon logged in to AMI (Asterisk Call Manager/{event.get('ami_version')}).")
        self.say()

    def _flush(self) -> None:
        """Tell the calls so far: a new line is coming, and the story stays in order."""
        for call_id in list(self._calls):
            self._print_call(call_id)

    def _incoming(self, event: EventDict) -> None:
        self._flush()
        self.tally.detected += 1
        self._calls[str(event.get("call_id"))] = CallStory(
            pretty_number(str(event.get("caller", ""))), self._clock()
        )

    def _skipped(self, event: EventDict) -> None:
        reason = str(event.get("reason"))
        if reason not in SKIPPED or str(event.get("call_id")) in self._calls:
            return
        self._flush()
        self.tally.skipped[reason] += 1
        caller = str(event.get("caller", ""))
        who = f"{caller} {ARROW} {event.get('exten')}" if reason != "anonymous" else caller
        self.say(f"  {who} {ARROW} {SKIPPED[reason]}")

    def _lookup(self, event: EventDict) -> None:
        story = self._calls.get(str(event.get("call_id")))
        entity_type = event.get("entity_type")
        if entity_type:
            self.tally.found += 1
        self.tally.cached += bool(event.get("cached"))
        if story is not None:
            found = f'Kommo {entity_type} "{event.get("name")}"' if entity_type else "not in Kommo"
            story.entity = found + (" (cached)" if event.get("cached") else "")
            if event.get("source") == "phonebook":
                story.entity += " (answered from the phone book)"

    def _notified(self, event: EventDict) -> None:
        users = event.get("users")
        recipients: list[int | None] = list(users) if isinstance(users, list) else [None]
        self.tally.notifications += 1
        self.tally.users.update(recipients)
        story = self._calls.get(str(event.get("call_id")))
        if story is not None:
            story.users.extend(u for u in recipients if u not in story.users)
            story.last_notified = self._clock()

    def _notify_dropped(self, event: EventDict) -> None:
        reason = str(event.get("reason"))
        self.tally.dropped[reason] += 1
        story = self._calls.get(str(event.get("call_id")))
        if story is not None:
            story.dropped.append(reason)

    def _recorded(self, event: EventDict) -> None:
        self.tally.journal_recorded += 1
        call_id = str(event.get("call_id"))
        story = self._calls.get(call_id)
        if story is None:
            return
        self._print_call(call_id)
        story.ended = ended_text(event)
        self._unsent.append(call_id)
        if call_id in self._sent_early:  # the sender may read a record the writer just
            self._took(call_id, self._sent_early.pop(call_id))  # committed, before its line

    def _sent(self, event: EventDict) -> None:
        count = int(event.get("count") or 1)
        self.tally.journal_sent += count
        calls = event.get("calls")
        if not isinstance(calls, list):  # no per-call detail: the oldest records went
            sent, self._unsent = self._unsent[:count], self._unsent[count:]
            for call_id in sent:
                self._print_ended(call_id, "logged")
            return
        for call in calls:
            call_id = str(call.get("call_id"))
            if call_id in self._unsent:
                self._took(call_id, bool(call.get("entity_type")))
            elif call_id in self._calls:
                self._sent_early[call_id] = bool(call.get("entity_type"))

    def _took(self, call_id: str, attached: bool) -> None:
        """Kommo took the call's record: attached to an entity, or an unknown caller's, told
        when its incoming lead is made (or not)."""
        self._unsent.remove(call_id)
        if attached:
            self._print_ended(call_id, "logged")
        else:
            self._lead_pending.append(call_id)

    def _unsorted(self, event: EventDict) -> None:
        call_id = str(event.get("call_id"))
        if call_id in self._lead_pending:
            self._lead_pending.remove(call_id)
            lead = event.get("lead_id")
            self._print_ended(call_id, f"logged as incoming lead {lead} ({UNSORTED_NOTE})")

    def _journal_dropped(self, event: EventDict) -> None:
        self.tally.journal_dropped += 1
        call_id = str(event.get("call_id"))
        for waiting in (self._unsent, self._lead_pending):
            if call_id in waiting:
                waiting.remove(call_id)
                self._print_ended(call_id, f"not logged ({event.get('reason')})")

    def _problem(self, event: EventDict) -> None:
        self.tally.problems += 1
        detail = event.get("detail") or event.get("reason") or event.get("message") or ""
        self.say(f"  ! {event.get('event')} {detail}".rstrip())

    _handlers: ClassVar[dict[str, Callable[[DemoView, EventDict], None]]] = {
        "ami.connected": _connected,
        "call.incoming": _incoming,
        "call.skipped": _skipped,
        "kommo.lookup": _lookup,
        "kommo.notified": _notified,
        "kommo.notify_dropped": _notify_dropped,
        "journal.recorded": _recorded,
        "journal.sent": _sent,
        "journal.unsorted": _unsorted,
        "journal.dropped": _journal_dropped,
    }

    # -- lines --------------------------------------------------------------------------

    def _print_call(self, call_id: str) -> None:
        story = self._calls[call_id]
        if story.printed:
            return
        story.printed = True
        parts = [story.caller, story.entity or "lookup pending"]
        if story.users and story.last_notified is not None:
            ms = (story.last_notified - story.started) * 1000
            self.tally.latencies_ms.append(ms)
            parts.append(f"notified {recipients_text(story.users)} in {ms:.1f} ms")
        for reason in story.dropped:
            parts.append(f"notification dropped ({reason})")
        if not story.users and not story.dropped:
            parts.append("nobody notified")
        self.say("  " + f" {ARROW} ".join(parts))

    def _print_ended(self, call_id: str, outcome: str) -> None:
        story = self._calls[call_id]
        self.say(f"  {story.caller} ended: {story.ended} {ARROW} {outcome}")


def pretty_number(digits: str) -> str:
    """``18305803077`` -> ``+1 830-580-3077``; anything that is no phone number stays."""
    if not digits.isdigit() or len(digits) < 7:
        return digits
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return digits
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def recipients_text(users: list[int | None]) -> str:
    if None in users:
        return "everyone"
    ids = ", ".join(str(u) for u in users)
    return f"user {ids}" if len(users) == 1 else f"users {ids}"


def ended_text(event: EventDict) -> str:
    """The journal's own human line (``result``) when it has one, else built from the status
    (Kommo's ``call_status`` code, or its name)."""
    result = event.get("result") or event.get("call_result")
    if result:
        return str(result)
    status = event.get("status")
    word = STATUS_WORDS.get(str(status).lower(), str(status).lower().replace("_", " "))
    if word != "answered":
        return word
    who, duration = event.get("answered_by"), event.get("duration")
    by = f" by {who}" if who else ""
    return f"answered{by} after {duration:g} s" if duration is not None else f"answered{by}"


def summary_rows(tally: Tally) -> list[tuple[str, str]]:
    """The closing table; a problem row only when there was a problem."""
    cached = f" ({tally.cached} from the cache)" if tally.cached else ""
    rows = [
        ("inbound calls detected", str(tally.detected)),
        ("callers found in Kommo", f"{tally.found} of {tally.detected}{cached}"),
        ("notifications sent", f"{tally.notifications} (to {recipients_count(tally.users)})"),
    ]
    if tally.latencies_ms:
        ordered = sorted(tally.latencies_ms)
        median = ordered[len(ordered) // 2]
        rows.append(("call → notified", f"median {median:.1f} ms, slowest {ordered[-1]:.1f} ms"))
    if tally.skipped:
        reasons = ", ".join(f"{SKIPPED[r].split(': ')[1]} {n}" for r, n in tally.skipped.items())
        rows.append(("skipped (as expected)", reasons))
    if tally.journal_recorded:
        rows.append(("calls journaled", f"{tally.journal_sent} of {tally.journal_recorded} logged"))
    problems: list[tuple[str, Any]] = [
        ("notifications dropped", sum(tally.dropped.values())),
        ("journal records dropped", tally.journal_dropped),
        ("warnings and errors", tally.problems),
    ]
    rows.extend((label, str(n)) for label, n in problems if n)
    return rows


def recipients_count(users: set[int | None]) -> str:
    named = len(users - {None})
    text = f"{named} user" + ("s" if named != 1 else "")
    return text + (" and everyone" if None in users else "")
