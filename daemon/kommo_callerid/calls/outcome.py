"""Call outcome tracking: follow each call (Linkedid) to its end and say what it was.

Pure: no I/O, no asyncio; time comes in on the events (``received_at``, loop time) and a
wall-clock offset passed in. A call ends when every channel born with its Linkedid has hung up;
then :func:`~.outcome_verdict.verdict` turns what was seen into one
:class:`~kommo_callerid.core.models.FinishedCall` (or nothing, for an internal or
withheld-caller call), and the call's state is freed.

Which events, and why:

- ``Newchannel`` / ``NewCallerid`` / ``Hangup`` (with ``Cause``): the call's channels, its
  caller, its end; cause 17 on the root with nothing dialled is a busy call.
- ``DialEnd``: each dialled leg's fate (ANSWER, BUSY, NOANSWER, CANCEL = the caller gave up,
  CONGESTION/CHANUNAVAIL = unreachable). It names both ends, so ``DialBegin`` adds nothing the
  outcome needs and is not subscribed to (one event less per leg).
- ``BridgeEnter`` / ``BridgeLeave``, not ``Newstate`` Up, for "answered": Up only says that a
  channel was answered by anyone, the dialplan included: the trunk goes Up when an IVR or a
  queue picks it up to play music, a Local ``;2`` half when its own dialplan answers. A
  bridge puts two parties in one conversation, so "the caller's channel shares a bridge with
  X" means "X talked with the caller". Bridges also carry a call across Linkedids: in an
  attended transfer or a pickup the new party belongs to another call (the consult call, the
  picker's own) and only the shared bridge ties it to ours.

- ``VarSet`` of ``MIXMONITOR_FILENAME`` (``RECORDING_FILE``, only with ``read = dialplan``):
  the call's recording file, for its journal record's link. The call's Uniqueids (births,
  bridged channels) go on the record too: FreePBX names the file by one of them.

Who answered: the caller's side of a call is its root channel (Uniqueid == Linkedid) and, when
that is a Local ``;1``, its ``;2`` half. Whoever joins it (a DialEnd ANSWER from it, or a
bridge with it) is a party; a Local ``;1`` party stands for what its ``;2`` half answered
(``Local/100@agents-...;1`` -> ``PJSIP/100-...`` -> ``100``), or its own exten when that is all.
The first party answered; later ones are transfers.

AMI 1.x (Asterisk 11 and older) sends no Linkedid, ``DialEnd`` or bridge events: its events
are counted (``no_linkedid``) and otherwise ignored here, so none of its calls is journaled.

A lost AMI link (``LINK_LOST``) is a gap: the Hangups in it are gone. What was known is kept
until the next session's list of the channels up (CHANNEL_UP events, then CHANNELS_LISTED):
a channel from before the gap that is not listed went in it, and a call with none left is
dropped (``link_lost``: when it ended is unknown); a listed call the tracker does not follow
(it started in the gap, or before the daemon) is taken up (:mod:`.outcome_resume`). Either
way its later Hangups end it as usual. When no list comes (CHANNELS_UNKNOWN: refused, AMI 1.x)
every call with a channel from before the gap is dropped.

Memory: a call's state lives from its root's Newchannel to its last Hangup; at most
``max_calls`` calls, for at most ``max_age`` seconds unanswered and ``max_answered_age``
answered (a conference, a forgotten hold). Over the cap the oldest call nobody has answered
goes first (a flood of calls that never hang up is all unanswered; a conversation in progress
keeps its record), then the oldest call. Channel and bridge maps are freed on Hangup and
capped too. Every call dropped without a verdict is counted.

Who is connected to whom (Local halves, Dials, bridges) is kept in :mod:`.outcome_links`; the
rules that judge a finished call are in :mod:`.outcome_verdict`.

Size: one PBX's call table with every event that changes it, gaps included, and the
click-to-call mark; the pieces that need none of the table live in the modules named above.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

from kommo_callerid.calls.detector import channel_extension, is_withheld
from kommo_callerid.calls.outcome_links import ChannelLinks, put
from kommo_callerid.calls.outcome_resume import births, bridge_entries
from kommo_callerid.calls.outcome_verdict import (
    ANSWER,
    CallFacts,
    Click,
    Dial,
    VerdictRules,
    context_matcher,
    verdict,
)
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind, FinishedCall

#: Unanswered calls older than this are dropped even if their last Hangup never came.
MAX_CALL_AGE = 4 * 3600.0
#: The same for answered calls: a conference or a forgotten hold may last all day.
MAX_ANSWERED_CALL_AGE = 24 * 3600.0
#: Calls in progress per PBX: more than one Asterisk carries (a call is two channels or
#: more); beyond it Hangups were lost or the PBX is flooded, and memory must stay bounded.
MAX_TRACKED_CALLS = 5_000
#: Cap on each per-channel map (Local halves, answered dials, bridge members).
MAX_CHANNELS = 50_000
#: Clicks waiting for their channel (the daemon originated them a moment ago).
MAX_PENDING_CLICKS = 1_000
#: Dials remembered per call (a queue ringing for an hour retries its agents again and again).
MAX_DIALS_PER_CALL = 500

_K = ChannelEventKind
#: A lost link and what the next session says of the channels up.
_GAP_KINDS = frozenset({_K.LINK_LOST, _K.CHANNEL_UP, _K.CHANNELS_LISTED, _K.CHANNELS_UNKNOWN})


@dataclass(slots=True)
class OutcomeStats:
    finished: int = 0  # calls that ended
    recorded: int = 0  # of them, journaled (a FinishedCall)
    not_journaled: int = 0  # internal, withheld caller, or a context that is neither
    dropped_link_lost: int = 0  # forgotten after a lost AMI link
    dropped_stale: int = 0  # older than max_age
    dropped_overflow: int = 0  # pushed out by max_calls
    no_linkedid: int = 0  # events of an AMI 1.x PBX (no Linkedid): their calls are not followed
    resumed: int = 0  # calls taken up from the channels listed after a login

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def untracked(self) -> dict[str, int]:
        """Calls forgotten before their end, so never journaled, by reason."""
        return {
            "overflow": self.dropped_overflow,
            "stale": self.dropped_stale,
            "link_lost": self.dropped_link_lost,
        }


class OutcomeTracker:
    """Feed it every channel event; it answers with the calls that just ended."""

    def __init__(
        self,
        inbound_contexts: Iterable[str],
        outbound_contexts: Iterable[str],
        min_digits: int,
        default_region: str = "",
        *,
        pbx: str = "",
        wall_offset: float = 0.0,
        max_calls: int = MAX_TRACKED_CALLS,
        max_age: float = MAX_CALL_AGE,
        max_answered_age: float = MAX_ANSWERED_CALL_AGE,
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        self.rules = VerdictRules(
            context_matcher(inbound_contexts),
            context_matcher(outbound_contexts),
            min_digits,
            default_region,
            pbx,
            wall_offset,
        )
        self.stats = OutcomeStats()
        self._max_calls = max_calls
        self._max_age = max_age
        self._max_answered_age = max_answered_age
        self._max_channels = max_channels
        self._calls: dict[str, CallFacts] = {}  # by Linkedid, oldest first
        self._unanswered: dict[str, None] = {}  # Linkedids nobody answered yet, oldest first
        self._call_of: dict[str, str] = {}  # Uniqueid -> Linkedid of a tracked call
        self._caller_side: dict[str, str] = {}  # Uniqueid -> Linkedid whose caller it carries
        self._links = ChannelLinks(max_channels)
        #: In a gap: the channels known before it (each may have hung up in it); else None.
        self._before_gap: set[str] | None = None
        #: When the gap began at the latest: the last event before it.
        self._gap_from = 0.0
        self._last_at = float("-inf")
        #: CHANNEL_UP events of the list on its way, by Uniqueid.
        self._listing: dict[str, ChannelEvent] = {}
        #: Click-to-call: the root Uniqueid (Originate ChannelId) -> the click, until it shows.
        self._clicks: dict[str, Click] = {}

    def expect_click(self, uniqueid: str, click: Click) -> None:
        """The daemon is about to originate a click whose first channel gets ``uniqueid``:
        that call is the user's outbound call, whatever context its Local channel is in."""
        if len(self._clicks) >= MAX_PENDING_CLICKS:
            del self._clicks[next(iter(self._clicks))]  # the oldest: its channel is long due
        self._clicks[uniqueid] = click

    def __len__(self) -> int:
        return len(self._calls)

    def reconfigure(
        self,
        inbound_contexts: Iterable[str],
        outbound_contexts: Iterable[str],
        min_digits: int,
        default_region: str = "",
    ) -> None:
        """New ``[calls]`` rules (SIGHUP): they pick the calls started from now on, and judge
        every call that ends from now on."""
        self.rules = replace(
            self.rules,
            is_inbound=context_matcher(inbound_contexts),
            is_outbound=context_matcher(outbound_contexts),
            min_digits=min_digits,
            default_region=default_region,
        )

    def table_sizes(self) -> dict[str, int]:
        """Every internal table's size: all 0 when no call is in progress."""
        return {
            "calls": len(self._calls),
            "unanswered": len(self._unanswered),
            "channels": len(self._call_of),
            "caller_side": len(self._caller_side),
            "listing": len(self._listing),
            "before_gap": len(self._before_gap or ()),
            "clicks": len(self._clicks),
            **self._links.sizes(),
        }

    def feed(self, event: ChannelEvent) -> list[FinishedCall]:
        kind = event.kind
        if not event.has_linkedid and kind is not _K.LINK_LOST:
            # AMI 1.x: no Linkedid, DialEnd or bridges, so an answered call would look
            # missed; such a PBX's calls are not journaled at all rather than journaled wrong.
            self.stats.no_linkedid += 1
            return []
        if kind is not _K.LINK_LOST:
            self._last_at = event.received_at
        if kind is _K.NEWCHANNEL:
            return self._new_channel(event)
        if kind is _K.NEWCALLERID:
            self._caller_id(event)
        elif kind is _K.DIAL_END:
            self._dial_end(event)
        elif kind is _K.BRIDGE_ENTER:
            self._bridge_enter(event)
        elif kind is _K.BRIDGE_LEAVE:
            self._links.leave(event.uniqueid)
        elif kind is _K.HANGUP:
            return self._hangup(event)
        elif kind is _K.RECORDING_FILE:
            self._recording_file(event)
        elif kind in _GAP_KINDS:
            self._gap_event(event)
        return []

    def expire(self, now: float) -> int:
        """Drop calls older than ``max_age``, or ``max_answered_age`` when answered (a Hangup
        was lost); how many. Clicks whose channel never came are forgotten too (not counted:
        no call was lost)."""
        self._clicks = {k: c for k, c in self._clicks.items() if c.until > now}

        def limit(call: CallFacts) -> float:
            return self._max_age if call.answered_at is None else self._max_answered_age

        stale = [c for c in self._calls.values() if now - c.started >= limit(c)]
        for call in stale:
            self._drop(call)
        self.stats.dropped_stale += len(stale)
        return len(stale)

    # -- event handlers -------------------------------------------------------------------

    def _new_channel(self, event: ChannelEvent) -> list[FinishedCall]:
        uniqueid, linkedid, name = event.uniqueid, event.linkedid, event.channel
        self._links.new_channel(uniqueid, name)
        if uniqueid == linkedid:
            self._new_root(event)
            return []
        call = self._calls.get(linkedid)
        if call is not None:
            call.alive.add(uniqueid)
            call.add_channel(uniqueid)
            put(self._call_of, uniqueid, linkedid, self._max_channels)
            if name.endswith(";2") and call.root_channel == name[:-1] + "1" and not call.click:
                self._caller_side[uniqueid] = linkedid  # the root's other Local half
        return []

    def _new_root(self, event: ChannelEvent) -> None:
        rules = self.rules
        if event.linkedid in self._calls:
            return  # a repeated Newchannel
        click = self._clicks.pop(event.uniqueid, None)
        if click is not None and click.until < event.received_at:
            click = None  # not the click's channel (a Uniqueid reused long after)
        known = rules.is_inbound(event.context) or rules.is_outbound(event.context)
        if click is None and not known:
            return  # neither inbound nor outbound: never journaled, not tracked
        self._make_room()
        call = CallFacts(
            event.linkedid,
            event.channel,
            event.context,
            event.exten,
            event.caller_num,
            event.received_at,
            click=click,
        )
        call.alive.add(event.uniqueid)
        call.add_channel(event.uniqueid)
        self._calls[event.linkedid] = call
        self._unanswered[event.linkedid] = None
        self._call_of[event.uniqueid] = event.linkedid
        self._caller_side[event.uniqueid] = event.linkedid

    def _caller_id(self, event: ChannelEvent) -> None:
        call = self._calls.get(event.linkedid)
        if call is not None and event.uniqueid == event.linkedid and is_withheld(call.caller_num):
            call.caller_num = event.caller_num  # a Local root learns its caller late

    def _dial_end(self, event: ChannelEvent) -> None:
        dialler = event.uniqueid
        call = self._calls.get(self._call_of.get(dialler, event.linkedid))
        if call is not None and len(call.dials) < MAX_DIALS_PER_CALL:
            call.dials.append(Dial(event.channel, event.dest_channel, event.dial_status))
        if event.dial_status != ANSWER or not dialler:
            return
        self._links.dial_answered(dialler, event.dest_channel)
        side = self._calls.get(self._caller_side.get(dialler, ""))
        if side is not None:
            self._add_party(side, self._who(event.dest_channel, side), event.received_at)

    def _recording_file(self, event: ChannelEvent) -> None:
        """MixMonitor named its file on one of the call's channels: the first one counts
        (FreePBX records a call once; a later one is a transfer's consult call)."""
        call = self._calls.get(self._call_of.get(event.uniqueid, ""))
        if call is not None and not call.recording_file and event.recording_file:
            call.recording_file, call.recording_uniqueid = event.recording_file, event.uniqueid

    def _bridge_enter(self, event: ChannelEvent) -> None:
        uniqueid, name = event.uniqueid, event.channel
        ours = self._calls.get(self._call_of.get(uniqueid, ""))
        if ours is not None:
            ours.add_channel(uniqueid, bridged=True)
        members = self._links.enter(uniqueid, name, event.bridge_id)
        own = self._calls.get(self._caller_side.get(uniqueid, ""))
        for other, other_name in (members or {}).items():
            if own is not None and self._caller_side.get(other) != own.linkedid:
                self._add_party(own, self._who(other_name, own), event.received_at)
            joined = self._calls.get(self._caller_side.get(other, ""))
            if joined is not None and joined is not own:
                self._add_party(joined, self._who(name, joined), event.received_at)

    def _hangup(self, event: ChannelEvent) -> list[FinishedCall]:
        uniqueid = event.uniqueid
        self._links.hangup(uniqueid, event.channel)
        self._caller_side.pop(uniqueid, None)
        call = self._calls.get(self._call_of.pop(uniqueid, ""))
        if call is None:
            return []
        call.alive.discard(uniqueid)
        if uniqueid == call.linkedid:
            call.root_hangup_at, call.root_cause = event.received_at, event.cause
        if call.alive:
            return []
        call.ended_at = event.received_at
        del self._calls[call.linkedid]
        self._unanswered.pop(call.linkedid, None)
        self.stats.finished += 1
        finished = verdict(call, self.rules)
        if finished is None:
            self.stats.not_journaled += 1
            return []
        self.stats.recorded += 1
        return [finished]

    # -- gaps -----------------------------------------------------------------------------

    def _gap_event(self, event: ChannelEvent) -> None:
        kind = event.kind
        if kind is _K.CHANNEL_UP:
            if len(self._listing) < self._max_channels:
                self._listing[event.uniqueid] = event
        elif kind is _K.CHANNELS_LISTED:
            self._channels_listed()
        elif kind is _K.CHANNELS_UNKNOWN:
            self._end_gap(None)
        else:
            self._link_lost(event)

    def _link_lost(self, event: ChannelEvent) -> None:
        if self._before_gap is None:
            self._before_gap = set()
            self._gap_from = min(self._last_at, event.received_at)
            if self._gap_from == float("-inf"):
                self._gap_from = event.received_at  # nothing seen before the gap
        # Channels born in a session lost before its list came are as unsure as older ones.
        self._before_gap.update(self._call_of, self._caller_side, self._links.uniqueids())
        self._listing.clear()

    def _channels_listed(self) -> None:
        """The list is complete: forget what went in the gap, take up what is new."""
        listed, self._listing = self._listing, {}
        floor = self._gap_from if self._before_gap is not None else float("-inf")
        self._end_gap(listed)
        for born in births(listed.values(), self._call_of):
            tracked = born.linkedid in self._calls
            self._new_channel(born)
            if not tracked and born.linkedid in self._calls:
                self.stats.resumed += 1
        links, side = self._links, self._caller_side
        for entry in bridge_entries(listed.values(), links.bridge_of, side, floor):
            self._bridge_enter(entry)

    def _end_gap(self, listed: dict[str, ChannelEvent] | None) -> None:
        """Forget the channels from before the gap that are not ``listed``; with no list,
        every call that had one (it may have ended in the gap)."""
        before, self._before_gap = self._before_gap, None
        if before is None:
            return
        gone = before.difference(listed or ())
        for call in list(self._calls.values()):
            lost = call.alive & gone
            if not lost:
                continue
            call.alive -= lost
            if listed is None or not call.alive:
                self._drop(call)
                self.stats.dropped_link_lost += 1
        for uniqueid in gone:
            self._call_of.pop(uniqueid, None)
            self._caller_side.pop(uniqueid, None)
        self._links.forget(gone)

    # -- helpers --------------------------------------------------------------------------

    def _who(self, channel: str, call: CallFacts) -> str:
        return self._links.who(channel, channel_extension(call.root_channel))

    def _add_party(self, call: CallFacts, extension: str, at: float) -> None:
        call.add_party(extension, at)
        if call.answered_at is not None:
            self._unanswered.pop(call.linkedid, None)

    def _make_room(self) -> None:
        while len(self._calls) >= self._max_calls:
            oldest = next(iter(self._unanswered or self._calls))
            self._drop(self._calls[oldest])
            self.stats.dropped_overflow += 1

    def _drop(self, call: CallFacts) -> None:
        """Forget a call without a verdict; its channels' bridge entries go at their Hangup."""
        del self._calls[call.linkedid]
        self._unanswered.pop(call.linkedid, None)
        for uniqueid in call.alive:
            self._call_of.pop(uniqueid, None)
            self._caller_side.pop(uniqueid, None)
