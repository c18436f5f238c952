"""Calls taken up after a login from the PBX's list of the channels up (``CoreShowChannels``).

Pure planning for :class:`~.outcome.OutcomeTracker`. The list (CHANNEL_UP events, each with
its ``age``) is turned into the events that would have made it, which the tracker then takes
as any others: a Newchannel for each channel it does not follow yet, stamped with the
channel's birth (``age`` before the list), and a BridgeEnter for each channel not yet known in
the bridge it is in now, stamped with when both sides of that bridge were first up (the later
birth of the two). So a call that started in a gap, or before the daemon, is followed to its
end, and one answered in a gap counts its talk from the PBX's own figures; that stamp can only
be late by the ring time of the party's leg, and is never before the gap began (``floor``).

What the list cannot tell (the Dials that ended in the gap, who hung up first) stays unknown:
a call taken up unanswered says "no extension rang" at worst.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import replace

from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

_K = ChannelEventKind


def births(listed: Iterable[ChannelEvent], known: Collection[str]) -> list[ChannelEvent]:
    """A Newchannel for each listed channel not ``known`` (by Uniqueid): roots first (a
    call's other channels join it), oldest first."""
    fresh = [e for e in listed if e.uniqueid not in known]
    fresh.sort(key=lambda e: (e.uniqueid != e.linkedid, -e.age))
    return [replace(e, kind=_K.NEWCHANNEL, received_at=e.received_at - e.age) for e in fresh]


def bridge_entries(
    listed: Iterable[ChannelEvent],
    bridge_of: Callable[[str], str | None],
    caller_side: Collection[str],
    floor: float,
) -> list[ChannelEvent]:
    """A BridgeEnter for each listed channel in a bridge it is not known to be in.

    Bridges without a caller's side come first: a Local ``;2`` half bridged with a phone
    then already names that phone when its ``;1`` half is bridged with the caller.
    """
    bridges: dict[str, list[ChannelEvent]] = {}
    for event in listed:
        if event.bridge_id:
            bridges.setdefault(event.bridge_id, []).append(event)
    order = sorted(bridges.items(), key=lambda b: any(m.uniqueid in caller_side for m in b[1]))
    entries: list[ChannelEvent] = []
    for bridge, members in order:
        inside = [m for m in members if bridge_of(m.uniqueid) == bridge]
        entering = [m for m in members if bridge_of(m.uniqueid) != bridge]
        entering.sort(key=lambda m: -m.age)
        youngest = min((m.age for m in inside), default=float("inf"))
        for member in entering:
            youngest = min(youngest, member.age)
            joined = max(floor, member.received_at - youngest)
            entries.append(replace(member, kind=_K.BRIDGE_ENTER, received_at=joined))
    return entries
