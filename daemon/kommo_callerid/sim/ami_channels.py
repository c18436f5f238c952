"""The channels a fake PBX has up, kept from the events it emits and listed as Asterisk's
``CoreShowChannels`` lists them (one ``CoreShowChannel`` item each).

Every channel event of Asterisk 12+ carries the channel's snapshot (state, caller ID, where it
is in the dialplan), so each event it emits refreshes the channel's entry: a Newchannel adds
it, a Hangup removes it, BridgeEnter / BridgeLeave set and clear its ``BridgeId``. The PBX keeps
its channels whether or not a client is connected: a dropped link leaves them up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

#: The snapshot headers a CoreShowChannel item repeats from the channel's events.
SNAPSHOT = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)
#: The headers that follow them, as Asterisk orders them (``Duration`` last).
_LATER = ("BridgeId", "Application", "ApplicationData")
#: A fake, not a PBX: beyond this many channels that never hung up the oldest is forgotten.
MAX_CHANNELS = 20_000


class PbxChannels:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: The clock of a channel's ``Duration``; a test may move it.
        self.clock = clock
        self._up: dict[str, dict[str, str]] = {}  # by Uniqueid, oldest first
        self._born: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._up)

    def apply(self, event: Mapping[str, str]) -> None:
        """Follow one emitted event (anything that is no channel event is ignored)."""
        name, uniqueid = event.get("Event", ""), event.get("Uniqueid", "")
        if not uniqueid:
            return
        if name == "Hangup":
            self._up.pop(uniqueid, None)
            self._born.pop(uniqueid, None)
            return
        channel = self._up.get(uniqueid)
        if channel is None:
            if name != "Newchannel":
                return
            channel = self._up[uniqueid] = {
                "BridgeId": "",
                "Application": "",
                "ApplicationData": "",
            }
            self._born[uniqueid] = self.clock()
            if len(self._up) > MAX_CHANNELS:
                oldest = next(iter(self._up))
                del self._up[oldest], self._born[oldest]
        channel.update((key, event[key]) for key in SNAPSHOT if key in event)
        if name == "BridgeEnter":
            channel["BridgeId"] = event.get("BridgeUniqueid", "")
        elif name == "BridgeLeave":
            channel["BridgeId"] = ""
        elif name == "Newexten":
            channel["Application"] = event.get("Application", "")
            channel["ApplicationData"] = event.get("AppData", "")

    def listed(self) -> list[dict[str, str]]:
        """Each channel up as a CoreShowChannel item's headers, ``Duration`` ``HH:MM:SS``."""
        now = self.clock()
        items = []
        for uniqueid, channel in self._up.items():
            item = {key: channel[key] for key in (*SNAPSHOT, *_LATER) if key in channel}
            items.append(item | {"Duration": _hms(now - self._born[uniqueid])})
        return items


def _hms(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
