"""A hand-driven PBX for the outcome tracker's tests: channel events with a manual clock."""

from __future__ import annotations

from dataclasses import replace

from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind, FinishedCall

K = ChannelEventKind
CALLER = "18305803077"
DID = "5551000"


class FakePbx:
    """Makes channels and feeds their events to one tracker; ``now`` moves when told."""

    def __init__(self, tracker: OutcomeTracker | None = None, prefix: str = "1795552671") -> None:
        default = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
        self.tracker = tracker if tracker is not None else default
        self.now = 1_000.0
        self.finished: list[FinishedCall] = []
        self._prefix = prefix
        self._seq = 0
        self._names: dict[str, str] = {}
        self._linked: dict[str, str] = {}
        self._born: dict[str, tuple[float, str, str, str]] = {}  # at, context, exten, number
        #: While True the events are made but never fed: the tracker does not see them (a gap).
        self.muted = False

    def at(self, seconds: float) -> FakePbx:
        self.now = 1_000.0 + seconds
        return self

    def feed(self, event: ChannelEvent) -> None:
        if not self.muted:
            self.finished.extend(self.tracker.feed(event))

    def link_lost(self) -> None:
        self.finished.extend(self.tracker.feed(ChannelEvent.link_lost(self.now)))

    def listed(self, *up: tuple[str, str]) -> None:
        """After a login: the channels up, each ``(uniqueid, bridge_id)``, then the end of
        the list. ``Duration`` is each channel's age since its Newchannel."""
        for uniqueid, bridge_id in up:
            born, context, exten, num = self._born[uniqueid]
            event = self._event(K.CHANNEL_UP, uniqueid, context=context, exten=exten, num=num)
            self.feed(replace(event, bridge_id=bridge_id, age=float(int(self.now - born))))
        self.feed(ChannelEvent.marker(K.CHANNELS_LISTED, self.now))

    def channel(
        self,
        name: str,
        call: str | None = None,
        *,
        context: str = "agents",
        exten: str = "",
        num: str = "<unknown>",
    ) -> str:
        """A Newchannel; ``call`` is the Linkedid (None: a new call rooted here)."""
        self._seq += 1
        uniqueid = f"{self._prefix}.{self._seq}"
        self._names[uniqueid] = name
        self._linked[uniqueid] = call or uniqueid
        self._born[uniqueid] = (self.now, context, exten, num)
        self.feed(self._event(K.NEWCHANNEL, uniqueid, context=context, exten=exten, num=num))
        return uniqueid

    def inbound(self, caller: str = CALLER, did: str = DID, trunk: str = "PJSIP/carrier") -> str:
        return self.channel(f"{trunk}-{self._seq:08x}", context="from-trunk", exten=did, num=caller)

    def local(self, exten: str, call: str, context: str = "agents") -> tuple[str, str]:
        """A Local pair ``Local/EXTEN@CONTEXT-N;1`` and ``;2``."""
        base = f"Local/{exten}@{context}-{self._seq:08x}"
        return self.channel(f"{base};1", call, exten=exten), self.channel(f"{base};2", call)

    def device(self, extension: str, call: str) -> str:
        return self.channel(f"PJSIP/{extension}-{self._seq:08x}", call)

    def caller_id(self, uniqueid: str, num: str) -> None:
        self.feed(self._event(K.NEWCALLERID, uniqueid, num=num))

    def dial_end(self, dialler: str, dest: str, status: str) -> None:
        event = self._event(K.DIAL_END, dialler)
        self.feed(_with(event, dest_channel=self._names[dest], dest_uniqueid=dest, status=status))

    def bridge(self, bridge_id: str, *uniqueids: str) -> None:
        for uniqueid in uniqueids:
            self.feed(_with(self._event(K.BRIDGE_ENTER, uniqueid), bridge_id=bridge_id))

    def leave(self, bridge_id: str, *uniqueids: str) -> None:
        for uniqueid in uniqueids:
            self.feed(_with(self._event(K.BRIDGE_LEAVE, uniqueid), bridge_id=bridge_id))

    def hangup(self, *uniqueids: str, cause: int = 16) -> None:
        for uniqueid in uniqueids:
            self.feed(_with(self._event(K.HANGUP, uniqueid), cause=cause))

    def _event(
        self, kind: K, uniqueid: str, *, context: str = "", exten: str = "", num: str = ""
    ) -> ChannelEvent:
        return ChannelEvent(
            kind,
            self._names[uniqueid],
            uniqueid,
            self._linked[uniqueid],
            num,
            "",
            context,
            exten,
            self.now,
        )


def _with(
    event: ChannelEvent,
    *,
    dest_channel: str = "",
    dest_uniqueid: str = "",
    status: str = "",
    bridge_id: str = "",
    cause: int = 0,
) -> ChannelEvent:
    return ChannelEvent(
        *(
            event.kind,
            event.channel,
            event.uniqueid,
            event.linkedid,
            event.caller_num,
            event.caller_name,
            event.context,
            event.exten,
            event.received_at,
        ),
        dest_channel=dest_channel,
        dest_uniqueid=dest_uniqueid,
        dial_status=status,
        cause=cause,
        bridge_id=bridge_id,
    )
