"""Call detection: which channel events are an inbound call, which call they belong to, and
which extensions ring for it.

Pure: no I/O, no clock of its own (time comes in on the events), no aiohttp, no panoramisk.
One inbound call makes many Newchannel events (trunk leg, Local ``;1``/``;2`` halves, every
agent phone); they share the Linkedid, and the call's root channel is the one whose Uniqueid
equals its Linkedid. :class:`CallTracker` turns that stream into a few decisions.

Size: one PBX's call state machine (roots, legs, caller-id updates, hangups) with the number
rules it applies; split, one invariant (a call's table entry) would span files.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import phonenumbers

from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

#: Caller numbers that mean "no number" (compared case-insensitively).
WITHHELD = frozenset(
    {"", "<unknown>", "unknown", "anonymous", "restricted", "private", "unavailable", "withheld"}
)
#: Calls older than this are forgotten even if their Hangup never arrived (lost link, bug).
MAX_CALL_AGE = 4 * 3600.0
#: Hard cap on tracked calls per PBX, so memory stays bounded whatever Asterisk sends: more
#: inbound calls than one Asterisk carries at once (the oldest is forgotten first; it was
#: notified long ago, and its Hangup only ends the notifier's work on it).
MAX_TRACKED_CALLS = 5_000

#: The events call detection reads; the others are the outcome tracker's.
_DETECTION_KINDS = frozenset({ChannelEventKind.NEWCHANNEL, ChannelEventKind.NEWCALLERID})
_SEPARATORS = re.compile(r"[\s\-.()\[\]/]")
_CHANNEL_SUFFIX = re.compile(r"-[0-9A-Za-z]+$")


class SkipReason(StrEnum):
    ANONYMOUS = "anonymous"
    INTERNAL = "internal"
    DUPLICATE = "duplicate"
    NOT_INBOUND = "not_inbound"


@dataclass(frozen=True, slots=True)
class CallStarted:
    """An inbound call from a caller we can look up."""

    call_id: str
    number: str
    caller_name: str
    did: str
    channel: str
    started_at: float
    #: The PBX's name; "" for the one unnamed ``[ami]``.
    pbx: str = ""


@dataclass(frozen=True, slots=True)
class LegRinging:
    """A new extension rings for a known inbound call."""

    call_id: str
    extension: str
    channel: str


@dataclass(frozen=True, slots=True)
class ChannelSkipped:
    """A channel that is not a caller to notify; ``number`` is the raw caller number."""

    call_id: str
    reason: SkipReason
    number: str
    channel: str
    exten: str
    pbx: str = ""


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str


Decision = CallStarted | LegRinging | ChannelSkipped | CallEnded


def normalize_number(raw: str, default_region: str = "") -> str | None:
    """A caller number in the form Kommo matches best, or None when it is no phone number.

    Separators go, an international ``00`` becomes ``+``; with a region, national numbers
    become E.164 (``phonenumbers`` knows every country's trunk prefix; hand-written rules
    would not). Numbers ``phonenumbers`` cannot place are kept as digits rather than lost.
    """
    number = _SEPARATORS.sub("", raw.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    digits = number.removeprefix("+")
    if not digits.isdigit() or not digits.isascii():
        return None
    if number.startswith("+") or not default_region:
        return number
    try:
        parsed = phonenumbers.parse(number, default_region)
    except phonenumbers.NumberParseException:
        return number
    if not phonenumbers.is_possible_number(parsed):
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def call_id_of(pbx: str, linkedid: str) -> str:
    """A call's id in logs and in Kommo: ``NAME/LINKEDID``, or the Linkedid for one PBX."""
    return f"{pbx}/{linkedid}" if pbx else linkedid


def digit_count(number: str) -> int:
    return sum(map(str.isdigit, number))


def channel_extension(channel: str) -> str:
    """``PJSIP/101-0000001b`` -> ``101``; ``Local/100@agents-00000004;1`` -> ``100``."""
    _, _, resource = channel.partition("/")
    if channel.startswith("Local/"):
        return resource.partition("@")[0]
    return _CHANNEL_SUFFIX.sub("", resource)


def is_withheld(number: str) -> bool:
    return number.strip().lower() in WITHHELD


def is_requested_channel(event: ChannelEvent) -> bool:
    """AMI 1.x (no Linkedid): a channel the PBX itself asked for, which is never a caller.

    Without Linkedid every channel looks like the root of its own call, and the Dial that
    says who asked for a channel comes only after it learnt its number (NewCallerid). But a
    channel that enters the dialplan from outside is born at an extension (the DID, or
    ``s``); one born at none was requested: a Dial's, a Queue's or an Originate's leg, or a
    transfer's clone (``AsyncGoto/...``). A ``Local/`` half is always requested. With a
    Linkedid such channels are legs of their call already, and this is not asked.
    """
    if event.has_linkedid:
        return False
    return not event.exten or event.channel.startswith("Local/")


@dataclass(slots=True)
class _Call:
    linkedid: str
    call_id: str
    root_channel: str
    did: str
    started_at: float
    number: str | None = None
    raw_number: str = ""
    skip_logged: bool = False
    rung: set[str] = field(default_factory=set)
    #: Legs that rang while the root still waited for its caller number.
    early_legs: list[tuple[str, str]] = field(default_factory=list)


class CallTracker:
    """Feed it every channel event; it answers with the decisions the daemon acts on."""

    def __init__(
        self,
        inbound_contexts: Iterable[str],
        min_digits: int,
        default_region: str = "",
        max_calls: int = MAX_TRACKED_CALLS,
        max_age: float = MAX_CALL_AGE,
        *,
        pbx: str = "",
    ) -> None:
        #: Calls are keyed by Linkedid here; their ids carry the PBX (:func:`call_id_of`).
        self._pbx = pbx
        patterns = "|".join(f"(?:{fnmatch.translate(p)})" for p in inbound_contexts)
        self._inbound = re.compile(patterns) if patterns else None
        self._min_digits = min_digits
        self._region = default_region
        self._max_calls = max_calls
        self._max_age = max_age
        #: Inbound calls and calls whose root still waits for a caller number, oldest first,
        #: by Linkedid.
        self._calls: dict[str, _Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def reconfigure(
        self, inbound_contexts: Iterable[str], min_digits: int, default_region: str = ""
    ) -> None:
        """New rules (a reloaded ``[calls]``) for the channels that arrive from now on."""
        patterns = "|".join(f"(?:{fnmatch.translate(p)})" for p in inbound_contexts)
        self._inbound = re.compile(patterns) if patterns else None
        self._min_digits = min_digits
        self._region = default_region

    def is_inbound_context(self, context: str) -> bool:
        return self._inbound is not None and self._inbound.fullmatch(context) is not None

    def feed(self, event: ChannelEvent) -> list[Decision]:
        if event.kind is ChannelEventKind.LINK_LOST:
            return self.forget_all()
        if event.kind is ChannelEventKind.HANGUP:
            return self._hangup(event)
        if event.kind is ChannelEventKind.DIAL_LEGACY:
            return self._dialled(event)
        if event.kind not in _DETECTION_KINDS:
            return []  # dial and bridge events are for the outcome tracker
        is_root = event.uniqueid == event.linkedid
        if event.kind is ChannelEventKind.NEWCALLERID:
            return self._caller_id_changed(event) if is_root else []
        if is_root:
            return self._new_root(event)
        return self._new_leg(event)

    def expire(self, now: float) -> list[Decision]:
        """Forget calls older than ``max_age`` (their Hangup was lost)."""
        decisions: list[Decision] = []
        # Only the oldest are looked at: no copy of the table (this runs for every new call).
        while self._calls:
            call = next(iter(self._calls.values()))
            if now - call.started_at < self._max_age:
                break  # insertion order is start order
            decisions.extend(self._forget(call))
        return decisions

    def forget_all(self) -> list[Decision]:
        """After a lost AMI link: state from before the gap cannot be trusted."""
        decisions: list[Decision] = []
        for call in list(self._calls.values()):
            decisions.extend(self._forget(call))
        return decisions

    # -- event handlers -------------------------------------------------------------------

    def _new_root(self, event: ChannelEvent) -> list[Decision]:
        if event.linkedid in self._calls:
            return [self._skip(event, SkipReason.DUPLICATE)]
        if not self.is_inbound_context(event.context) or is_requested_channel(event):
            return [self._skip(event, SkipReason.NOT_INBOUND)]
        decisions = self._make_room(event.received_at)
        call = _Call(
            event.linkedid,
            call_id_of(self._pbx, event.linkedid),
            event.channel,
            event.exten,
            event.received_at,
        )
        self._calls[call.linkedid] = call
        decisions.extend(self._classify(call, event))
        return decisions

    def _caller_id_changed(self, event: ChannelEvent) -> list[Decision]:
        call = self._calls.get(event.linkedid)
        if call is None or call.number is not None:
            return []
        if not event.has_linkedid and event.channel != call.root_channel:
            # AMI 1.x: renamed since its Newchannel, so a masquerade made it stand in for a
            # channel of a call already known (a Parked/ clone keeps the caller's context
            # and DID); the number it now shows is that call's, not a new caller's.
            return self._drop_waiting(call)
        return self._classify(call, event)

    def _classify(self, call: _Call, event: ChannelEvent) -> list[Decision]:
        """Decide a root channel whose caller number may have just become known."""
        call.raw_number = event.caller_num
        if is_withheld(event.caller_num):
            if event.caller_num.strip() in ("", "<unknown>"):
                return []  # Local roots learn their number later (NewCallerid); wait for it
            return self._skip_once(call, event, SkipReason.ANONYMOUS)
        number = normalize_number(event.caller_num, self._region)
        if number is None:
            return self._skip_once(call, event, SkipReason.ANONYMOUS)
        if digit_count(number) < self._min_digits:
            del self._calls[call.linkedid]
            return [self._skip(event, SkipReason.INTERNAL)]
        call.number = number
        started = CallStarted(
            call.call_id,
            number,
            event.caller_name,
            call.did,
            call.root_channel,
            call.started_at,
            self._pbx,
        )
        early = [LegRinging(call.call_id, ext, chan) for ext, chan in call.early_legs]
        call.early_legs.clear()
        return [started, *early]

    def _new_leg(self, event: ChannelEvent) -> list[Decision]:
        call = self._calls.get(event.linkedid)
        if call is None:
            return []  # a leg of a call we do not track (outbound, internal, before start)
        extension = channel_extension(event.channel)
        is_second_half = event.channel.startswith("Local/") and event.channel.endswith(";2")
        if is_second_half or not extension or extension in call.rung:
            if call.number is None:
                return []
            return [self._skip(event, SkipReason.DUPLICATE, call.number)]
        call.rung.add(extension)
        if call.number is None:
            call.early_legs.append((extension, event.channel))
            return []
        return [LegRinging(call.call_id, extension, event.channel)]

    def _dialled(self, event: ChannelEvent) -> list[Decision]:
        """AMI 1.x: a channel created by a Dial is a leg, never an inbound caller.

        Without Linkedid each channel looked like its own call; an outbound trunk leg born
        in an inbound context with no caller number yet waits for one (NewCallerid). Its
        Dial says it was dialled: it is dropped, and when the dialler is a tracked inbound
        call the dialled channel rings for it.
        """
        decisions: list[Decision] = []
        dialled = self._calls.get(event.uniqueid)
        if dialled is not None and dialled.number is None:
            decisions.extend(self._drop_waiting(dialled))
        if event.linkedid in self._calls:
            decisions.extend(self._new_leg(event))
        return decisions

    def _hangup(self, event: ChannelEvent) -> list[Decision]:
        if event.uniqueid != event.linkedid:
            return []
        call = self._calls.get(event.linkedid)
        return self._forget(call) if call else []

    # -- helpers --------------------------------------------------------------------------

    def _forget(self, call: _Call) -> list[Decision]:
        del self._calls[call.linkedid]
        if call.number is not None:
            return [CallEnded(call.call_id)]
        if call.skip_logged:
            return []
        # It never got a usable number: the caller was anonymous after all.
        return [
            ChannelSkipped(
                call.call_id,
                SkipReason.ANONYMOUS,
                call.raw_number,
                call.root_channel,
                call.did,
                self._pbx,
            )
        ]

    def _drop_waiting(self, call: _Call) -> list[Decision]:
        """A root still waiting for its number turned out to be part of another call."""
        del self._calls[call.linkedid]
        return [
            ChannelSkipped(
                call.call_id, SkipReason.NOT_INBOUND, "", call.root_channel, call.did, self._pbx
            )
        ]

    def _make_room(self, now: float) -> list[Decision]:
        decisions = self.expire(now)
        while len(self._calls) >= self._max_calls:
            decisions.extend(self._forget(next(iter(self._calls.values()))))
        return decisions

    def _skip_once(self, call: _Call, event: ChannelEvent, reason: SkipReason) -> list[Decision]:
        if call.skip_logged:
            return []
        call.skip_logged = True
        return [self._skip(event, reason)]

    def _skip(self, event: ChannelEvent, reason: SkipReason, number: str = "") -> ChannelSkipped:
        number = number or event.caller_num
        call_id = call_id_of(self._pbx, event.linkedid)
        return ChannelSkipped(call_id, reason, number, event.channel, event.exten, self._pbx)
