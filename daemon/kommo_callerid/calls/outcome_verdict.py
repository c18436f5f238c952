"""What a finished call WAS: direction, status, who answered first, the ``call_result`` line.

Pure rules over the facts :class:`~.outcome.OutcomeTracker` gathered for one Linkedid
(:class:`CallFacts`). The contract's table decides the status: 4 answered; 7 busy when every
dialled leg was busy; 5 (outbound only) when the number could not be reached (congestion,
channel unavailable); 6 otherwise.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kommo_callerid.calls.detector import (
    channel_extension,
    digit_count,
    is_withheld,
    normalize_number,
)
from kommo_callerid.core.models import (
    MAX_CALL_UNIQUEIDS,
    CallDirection,
    CallStatus,
    FinishedCall,
)

ANSWER, BUSY, CANCEL, NOANSWER = "ANSWER", "BUSY", "CANCEL", "NOANSWER"
UNREACHABLE = frozenset({"CONGESTION", "CHANUNAVAIL"})
CAUSE_BUSY = 17
#: Q.850 causes that mean "this number cannot be reached": unallocated number, no route,
#: destination out of order, invalid number format, no circuit, network out of order,
#: switching equipment congestion.
UNREACHABLE_CAUSES = frozenset({1, 3, 27, 28, 34, 38, 42})
#: Parties named per call (the first answered, the rest are transfers).
MAX_PARTIES = 20


@dataclass(slots=True)
class Dial:
    """One ended Dial of the call (DialEnd)."""

    dialler: str  # the dialling channel's name ("" for an Originate)
    dest: str  # the dialled channel's name
    status: str


@dataclass(frozen=True, slots=True)
class Click:
    """A click-to-call the daemon originated: the root channel's Uniqueid was its
    ``ChannelId``, so the call is that user's outbound call to ``number``."""

    user_id: int
    extension: str
    number: str
    #: Loop time after which a click whose channel never appeared is forgotten.
    until: float


@dataclass(slots=True)
class CallFacts:
    """What the tracker saw of one call, in loop time."""

    linkedid: str
    root_channel: str
    #: The root channel's Newchannel context and exten (they decide the direction).
    context: str
    exten: str
    caller_num: str
    started: float
    #: Uniqueids of the call's channels (by their Newchannel's Linkedid) not hung up yet.
    alive: set[str] = field(default_factory=set)
    dials: list[Dial] = field(default_factory=list)
    #: Extensions that talked with the caller, in order: the first answered.
    parties: list[str] = field(default_factory=list)
    answered_at: float | None = None
    root_hangup_at: float | None = None
    root_cause: int = 0
    ended_at: float = 0.0
    click: Click | None = None
    #: Uniqueids that may name the call's recording (each list at most MAX_CALL_UNIQUEIDS):
    #: channels in order of birth, and those that were bridged (they talked).
    born: list[str] = field(default_factory=list)
    bridged: list[str] = field(default_factory=list)
    #: ``MIXMONITOR_FILENAME`` and the Uniqueid of the channel that set it (the first one).
    recording_file: str = ""
    recording_uniqueid: str = ""

    def add_channel(self, uniqueid: str, *, bridged: bool = False) -> None:
        kept = self.bridged if bridged else self.born
        if len(kept) < MAX_CALL_UNIQUEIDS and uniqueid not in kept:
            kept.append(uniqueid)

    def uniqueids(self) -> tuple[str, ...]:
        """Most likely to name the recording first: MixMonitor's channel, the root, the
        bridged channels, the rest in order of birth."""
        first = (self.recording_uniqueid, self.linkedid, *self.bridged, *self.born)
        return tuple(u for u in dict.fromkeys(first) if u)[:MAX_CALL_UNIQUEIDS]

    def add_party(self, extension: str, at: float) -> None:
        if extension == channel_extension(self.root_channel) and self.parties:
            return  # the caller's own trunk again: a forward already named by its number
        if extension and extension not in self.parties and len(self.parties) < MAX_PARTIES:
            self.parties.append(extension)
            if self.answered_at is None:
                self.answered_at = at


def context_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """fnmatch patterns (``[calls] inbound_contexts``) as one compiled test."""
    joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
    if not joined:
        return lambda context: False
    compiled = re.compile(joined)
    return lambda context: compiled.fullmatch(context) is not None


@dataclass(frozen=True, slots=True)
class VerdictRules:
    is_inbound: Callable[[str], bool]
    is_outbound: Callable[[str], bool]
    min_digits: int
    default_region: str = ""
    pbx: str = ""
    #: Added to loop time to make Unix time (``time.time() - loop.time()`` at start-up).
    wall_offset: float = 0.0


def verdict(facts: CallFacts, rules: VerdictRules) -> FinishedCall | None:
    """The journal record of a finished call; None for an internal or withheld-caller call."""
    side = _direction(facts, rules)
    if side is None:
        return None
    direction, phone = side
    status = _status(facts, direction)
    answered_at = facts.answered_at
    duration = 0 if answered_at is None else whole_seconds(facts.ended_at - answered_at)
    inbound = direction is CallDirection.INBOUND
    click = facts.click
    return FinishedCall(
        call_id=f"{rules.pbx}/{facts.linkedid}" if rules.pbx else facts.linkedid,
        pbx=rules.pbx,
        linkedid=facts.linkedid,
        uniqueid=facts.linkedid,
        direction=direction,
        phone=phone,
        started_at=facts.started + rules.wall_offset,
        duration=duration,
        status=status,
        answered_by=facts.parties[0] if inbound and facts.parties else None,
        extension=None if inbound else (click.extension if click else root_extension(facts)),
        did=facts.exten if inbound else None,
        result=_result(facts, direction, status, duration),
        user_id=click.user_id if click else None,
        uniqueids=facts.uniqueids(),
        recording_file=facts.recording_file,
    )


def root_extension(facts: CallFacts) -> str:
    return channel_extension(facts.root_channel)


def whole_seconds(seconds: float) -> int:
    return max(0, int(seconds + 0.5))


def _direction(facts: CallFacts, rules: VerdictRules) -> tuple[CallDirection, str] | None:
    if facts.click is not None:
        if not leaf_dials(facts) and facts.answered_at is None:
            return None  # the user's phone never answered: the customer was not dialled
        number = normalize_number(facts.click.number, rules.default_region)
        direction = CallDirection.OUTBOUND
    elif rules.is_inbound(facts.context):
        if is_withheld(facts.caller_num):
            return None
        number = normalize_number(facts.caller_num, rules.default_region)
        direction = CallDirection.INBOUND
    elif rules.is_outbound(facts.context):
        number = normalize_number(facts.exten, rules.default_region)
        direction = CallDirection.OUTBOUND
    else:
        return None
    if number is None or digit_count(number) < rules.min_digits:
        return None  # internal: extension to extension
    return direction, number


def leaf_dials(facts: CallFacts) -> list[Dial]:
    """Dials of real legs: a Dial of a Local ``;1`` whose ``;2`` dialled on is left out.

    A click's: only the root's Dials (to the customer); its other half rang the user."""
    if facts.click is not None:
        return [d for d in facts.dials if d.dialler == facts.root_channel]
    relays = {d.dialler[:-1] + "1" for d in facts.dials if d.dialler.endswith(";2")}
    return [d for d in facts.dials if d.dest not in relays]


def _status(facts: CallFacts, direction: CallDirection) -> CallStatus:
    if facts.answered_at is not None:
        return CallStatus.ANSWERED
    statuses = {d.status for d in leaf_dials(facts)}
    if statuses == {BUSY} or (not statuses and facts.root_cause == CAUSE_BUSY):
        return CallStatus.BUSY
    if direction is CallDirection.OUTBOUND and (
        (statuses and statuses <= UNREACHABLE | {BUSY})
        or (not statuses and facts.root_cause in UNREACHABLE_CAUSES)
    ):
        return CallStatus.INVALID_NUMBER
    return CallStatus.NO_ANSWER


def _result(facts: CallFacts, direction: CallDirection, status: CallStatus, talk: int) -> str:
    if status is CallStatus.ANSWERED:
        first, *later = facts.parties
        transfers = f"; transferred to {', then '.join(later)}" if later else ""
        if direction is CallDirection.OUTBOUND:
            return f"answered, {talk} s{transfers}"
        return f"answered by {first}{transfers}"
    dials = leaf_dials(facts)
    if status is CallStatus.BUSY:
        busy = _extensions(facts, dials, {BUSY})
        return f"busy: {busy}" if busy and direction is CallDirection.INBOUND else "busy"
    if status is CallStatus.INVALID_NUMBER:
        why = ", ".join(sorted({d.status.lower() for d in dials})) or f"cause {facts.root_cause}"
        return f"number unreachable ({why})"
    waited = whole_seconds((facts.root_hangup_at or facts.ended_at) - facts.started)
    if direction is CallDirection.OUTBOUND:
        return f"no answer after {waited} s"
    if any(d.status == CANCEL for d in dials):
        rang = _extensions(facts, dials, {CANCEL})
        return f"caller hung up after {waited} s while {rang} rang"
    if dials:
        return f"no answer from {_extensions(facts, dials, None)} after {waited} s"
    return f"ended after {waited} s; no extension rang"


def _extensions(facts: CallFacts, dials: list[Dial], statuses: set[str] | None) -> str:
    chosen = (_leg_name(facts, d) for d in dials if statuses is None or d.status in statuses)
    return ", ".join(dict.fromkeys(chosen))


def _leg_name(facts: CallFacts, dial: Dial) -> str:
    """A dialled leg's extension; a leg back out of the caller's trunk: the number dialled."""
    name = channel_extension(dial.dest)
    if name == channel_extension(facts.root_channel) and dial.dialler.startswith("Local/"):
        return channel_extension(dial.dialler)
    return name
