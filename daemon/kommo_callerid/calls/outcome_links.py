"""Who is connected to whom, across every call: Local halves, answered Dials, bridges.

Pure bookkeeping for :mod:`.outcome`: it names the party behind a channel
(``Local/100@agents-...;1`` -> what its ``;2`` half answered -> ``PJSIP/100-...`` -> ``100``)
and tells who already sits in a bridge a channel enters. Kept for every channel of the PBX,
not only tracked calls: a transfer target or a pickup belongs to another Linkedid. Entries go
at the channel's Hangup, or when the list of channels up after a gap no longer has it;
each map is capped (a Hangup lost without a link loss).
"""

from __future__ import annotations

from collections.abc import Collection

from kommo_callerid.calls.detector import channel_extension

#: Local ;1 -> ;2 -> ... chains followed when naming who answered.
MAX_LOCAL_HOPS = 4


class ChannelLinks:
    def __init__(self, max_channels: int) -> None:
        self._max = max_channels
        self._locals: dict[str, str] = {}  # Local channel name -> Uniqueid
        self._answered: dict[str, str] = {}  # dialling Uniqueid -> channel that answered it
        self._bridges: dict[str, dict[str, str]] = {}  # bridge -> {Uniqueid: channel}
        self._bridge_of: dict[str, str] = {}  # Uniqueid -> bridge

    def sizes(self) -> dict[str, int]:
        return {
            "locals": len(self._locals),
            "answered": len(self._answered),
            "bridges": len(self._bridges),
            "bridge_members": len(self._bridge_of),
        }

    def new_channel(self, uniqueid: str, name: str) -> None:
        if name.startswith("Local/"):
            put(self._locals, name, uniqueid, self._max)

    def dial_answered(self, dialler: str, dest: str) -> None:
        put(self._answered, dialler, dest, self._max)

    def enter(self, uniqueid: str, name: str, bridge: str) -> dict[str, str] | None:
        """Put a channel in a bridge (out of its previous one); who was there before it.

        None when over the cap: that bridge is not followed.
        """
        self.leave(uniqueid)
        if len(self._bridge_of) >= self._max:
            return None
        members = self._bridges.setdefault(bridge, {})
        before = dict(members)
        members[uniqueid] = name
        self._bridge_of[uniqueid] = bridge
        return before

    def leave(self, uniqueid: str) -> None:
        bridge = self._bridge_of.pop(uniqueid, None)
        if bridge is None:
            return
        members = self._bridges.get(bridge, {})
        members.pop(uniqueid, None)
        if not members:
            self._bridges.pop(bridge, None)

    def hangup(self, uniqueid: str, name: str) -> None:
        self.leave(uniqueid)
        self._answered.pop(uniqueid, None)
        if self._locals.get(name) == uniqueid:
            del self._locals[name]

    def who(self, channel: str, trunk: str, hops: int = 0) -> str:
        """The extension a channel stands for: through Local halves to the real device.

        A Local that ends on ``trunk`` (the caller's own: a forward to a mobile) stands for the
        number it dialled, not for the trunk.
        """
        if channel.startswith("Local/") and channel.endswith(";1") and hops < MAX_LOCAL_HOPS:
            half = self._locals.get(channel[:-1] + "2", "")
            beyond = self._answered.get(half) or self._bridge_mate(half)
            if beyond:
                device = self.who(beyond, trunk, hops + 1)
                if device != trunk:
                    return device
        return channel_extension(channel)

    def bridge_of(self, uniqueid: str) -> str | None:
        return self._bridge_of.get(uniqueid)

    def uniqueids(self) -> set[str]:
        """Every channel something is known of."""
        return {*self._locals.values(), *self._answered, *self._bridge_of}

    def forget(self, uniqueids: Collection[str]) -> None:
        """Forget channels that went in a gap (their Hangups are gone)."""
        for uniqueid in uniqueids:
            self.leave(uniqueid)
            self._answered.pop(uniqueid, None)
        for name in [name for name, u in self._locals.items() if u in uniqueids]:
            del self._locals[name]

    def _bridge_mate(self, uniqueid: str) -> str:
        """A channel sharing a bridge with this one (a device before a Local), or ""."""
        members = self._bridges.get(self._bridge_of.get(uniqueid, ""), {})
        mates = [name for other, name in members.items() if other != uniqueid]
        return next((m for m in mates if not m.startswith("Local/")), mates[0] if mates else "")


def put(table: dict[str, str], key: str, value: str, cap: int) -> None:
    """Insert, dropping the oldest entry over ``cap`` (a Hangup that never came)."""
    table[key] = value
    if len(table) > cap:
        del table[next(iter(table))]
