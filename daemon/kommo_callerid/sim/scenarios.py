"""Synthetic calls as the AMI events Asterisk sends for them (the demo and the tests use these).

Modelled on the recordings in ``tests/data/ami-recordings``: an inbound call starts with the
trunk channel (``Uniqueid == Linkedid``, context ``from-trunk``, ``Exten`` = the DID, the caller
in ``CallerIDNum``). Each ringing agent adds, when the PBX dials through a queue, a
``Local/<ext>@from-queue-...;1``/``;2`` pair born with ``<unknown>`` caller ID that a
``NewCallerid`` fills in, and then the agent's phone leg ``PJSIP/<ext>-...``. On every dialled
(outgoing) leg ``CallerIDNum`` is the dialled number and the real caller is in
``ConnectedLineNum``, as in the recordings. When an agent answers, the events end with its
``DialEnd`` ANSWER and the ``BridgeEnter`` of both sides (what the outcome tracker reads; the
other agents' Dials get no DialEnd). Hangups are kept apart so a test can place them
whenever it likes.

Size: every kind of synthetic call (inbound, internal, outbound, click-to-call) in one builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

#: One AMI event: header name -> value, in Asterisk's order.
AmiEvent = dict[str, str]

UNKNOWN = "<unknown>"
_STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}
_PRESENTATION_ALLOWED = "0 (Presentation Allowed, Not Screened)"
_PRESENTATION_PROHIBITED = "35 (Presentation Prohibited, Network Number)"
_CAUSES = {
    0: "Unknown",
    16: "Normal Clearing",
    19: "User alerting, no answer",
    26: "Answered elsewhere",
}
_ANSWERED_ELSEWHERE = 26
_NO_ANSWER = 19
_NORMAL_CLEARING = 16


@dataclass(frozen=True, slots=True)
class SyntheticCall:
    """One call: the events that start it and, apart, the Hangups that end it."""

    kind: str  # "inbound", "internal" or "outbound"
    linkedid: str
    caller_num: str
    exten: str  # the DID of an inbound call, else the dialled number
    ringing: tuple[str, ...]  # extensions whose phone rings
    events: tuple[AmiEvent, ...]
    hangups: tuple[AmiEvent, ...]

    @property
    def all_events(self) -> tuple[AmiEvent, ...]:
        return self.events + self.hangups


@dataclass(slots=True)
class _Channel:
    name: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    state: int
    caller: tuple[str, str] = (UNKNOWN, UNKNOWN)
    connected: tuple[str, str] = (UNKNOWN, UNKNOWN)
    presentation: str = _PRESENTATION_ALLOWED

    def event(self, name: str) -> AmiEvent:
        fields: AmiEvent = {
            "Event": name,
            "Privilege": "call,all",
            "Channel": self.name,
            "ChannelState": str(self.state),
            "ChannelStateDesc": _STATE_DESC[self.state],
            "CallerIDNum": self.caller[0],
            "CallerIDName": self.caller[1],
            "ConnectedLineNum": self.connected[0],
            "ConnectedLineName": self.connected[1],
            "Language": "en",
            "AccountCode": "",
            "Context": self.context,
            "Exten": self.exten,
            "Priority": "1",
            "Uniqueid": self.uniqueid,
            "Linkedid": self.linkedid,
        }
        if name == "NewCallerid":
            fields["CID-CallingPres"] = self.presentation
        return fields

    def hangup(self, cause: int) -> AmiEvent:
        return self.event("Hangup") | {"Cause": str(cause), "Cause-txt": _CAUSES[cause]}


def _dial_end(dialler: _Channel, dest: _Channel, status: str) -> AmiEvent:
    return dialler.event("DialEnd") | {
        "DestChannel": dest.name,
        "DestUniqueid": dest.uniqueid,
        "DestLinkedid": dest.linkedid,
        "DialStatus": status,
    }


def _answer_events(root: _Channel, legs: list[_Channel]) -> list[AmiEvent]:
    """The agent's phone answers: DialEnd ANSWER up the chain, then both sides bridged.

    ``legs``: ``[Local ;1, Local ;2, phone]`` or ``[phone]``.
    """
    *local, phone = legs
    root.state = 6
    pairs = [(local[1], phone), (root, local[0])] if local else [(root, phone)]
    events = [_dial_end(dialler, dest, "ANSWER") for dialler, dest in pairs]
    for dialler, dest in pairs:
        bridge = {"BridgeUniqueid": f"bridge-{dest.uniqueid}", "BridgeType": "basic"}
        events += [dest.event("BridgeEnter") | bridge, dialler.event("BridgeEnter") | bridge]
    return events


class CallScenarios:
    """Builds calls with unique, increasing Uniqueids (``<epoch>.<seq>``) and channel names."""

    def __init__(
        self,
        *,
        epoch: int = 1_795_552_671,
        trunk: str = "PJSIP/carrier",
        inbound_context: str = "from-trunk",
        internal_context: str = "from-internal",
        queue_context: str = "from-queue",
    ) -> None:
        self._epoch = epoch
        self._seq = 0
        self._channel_seq = 0x1A
        self._local_seq = 0
        self._trunk = trunk
        self._inbound_context = inbound_context
        self._internal_context = internal_context
        self._queue_context = queue_context

    def inbound(
        self,
        caller: str = "18305803077",
        *,
        caller_name: str = "John Doe",
        did: str = "5551000",
        agents: Sequence[str] = ("100",),
        via_local: bool = True,
        answered_by: str | None = "",
        presentation: str = _PRESENTATION_ALLOWED,
    ) -> SyntheticCall:
        """A call from outside to ``did`` ringing ``agents``.

        ``answered_by``: the agent who answers; "" (the default) means the first agent,
        None means nobody answers.
        """
        self._epoch += 2  # calls are a few seconds apart, as on a real PBX
        root = self._phone_channel(self._trunk, self._inbound_context, did, state=4)
        root.caller = (caller, caller_name)
        events = [root.event("Newchannel")]
        hangups: list[AmiEvent] = []
        answerer = agents[0] if answered_by == "" and agents else answered_by
        answer: list[AmiEvent] = []
        for agent in agents:
            legs = self._agent_legs(root, agent, via_local, presentation, events)
            cause = self._leg_cause(agent, answerer)
            if cause == _NORMAL_CLEARING:
                for leg in legs:
                    leg.state = 6
                answer = _answer_events(root, legs)
            hangups.extend(leg.hangup(cause) for leg in reversed(legs))
        events += answer
        root.state = 6 if answerer else 4
        hangups.append(root.hangup(_NORMAL_CLEARING if answerer else _NO_ANSWER))
        return SyntheticCall(
            "inbound", root.linkedid, caller, did, tuple(agents), tuple(events), tuple(hangups)
        )

    def anonymous(
        self,
        number: str = "anonymous",
        *,
        did: str = "5551000",
        agents: Sequence[str] = ("100",),
    ) -> SyntheticCall:
        """A withheld caller: ``anonymous`` (or e.g. ``<unknown>``) in ``CallerIDNum``."""
        name = "Anonymous" if number == "anonymous" else UNKNOWN
        return self.inbound(
            number, caller_name=name, did=did, agents=agents, presentation=_PRESENTATION_PROHIBITED
        )

    def internal(
        self, caller_ext: str = "101", callee_ext: str = "102", *, caller_name: str = "Alice"
    ) -> SyntheticCall:
        """One extension dialling another: a 3-digit caller in ``from-internal``."""
        return self._dialled_call(
            "internal", caller_ext, caller_name, callee_ext, f"PJSIP/{callee_ext}"
        )

    def outbound(
        self, ext: str = "101", number: str = "18005551234", *, caller_name: str = "Alice"
    ) -> SyntheticCall:
        """An extension dialling out through the trunk (the trunk leg is not the root)."""
        return self._dialled_call("outbound", ext, caller_name, number, self._trunk)

    def click(
        self,
        channel_id: str,
        ext: str = "101",
        number: str = "18305803077",
        *,
        agent_answers: bool = True,
        customer: str = "ANSWER",
    ) -> SyntheticCall:
        """A click-to-call: an Originate of ``Local/<ext>@from-internal`` with ``ChannelId``
        ``channel_id`` (the root's Uniqueid), exten ``number``. The Local pair rings the
        agent's phone; when it answers, the ``;1`` half dials ``number`` on the trunk and the
        customer's leg ends with ``customer`` (ANSWER, BUSY, NOANSWER)."""
        self._epoch += 2
        self._local_seq += 1
        base = f"Local/{ext}@{self._internal_context}-{self._local_seq:08x}"
        one = _Channel(f"{base};1", channel_id, channel_id, self._internal_context, ext, 0)
        two = replace(one, name=f"{base};2", uniqueid=f"{channel_id};2", state=4)
        events = [one.event("Newchannel"), two.event("Newchannel")]
        one.caller = (number, "Kommo")
        events.append(one.event("NewCallerid"))
        phone = self._phone_channel(
            f"PJSIP/{ext}", self._internal_context, "s", state=5, linkedid=channel_id
        )
        events.append(phone.event("Newchannel"))
        if not agent_answers:
            events.append(_dial_end(two, phone, "NOANSWER"))
            hangups = [phone.hangup(_NO_ANSWER), two.hangup(_NO_ANSWER), one.hangup(_NO_ANSWER)]
            return SyntheticCall(
                "click", channel_id, ext, number, (ext,), tuple(events), tuple(hangups)
            )
        events += _answer_events(two, [phone])[:1]  # the agent answers the ;2 half's Dial
        one.state = two.state = phone.state = 6
        trunk = self._phone_channel(
            self._trunk, self._inbound_context, "s", state=0, linkedid=channel_id
        )
        events.append(trunk.event("Newchannel"))
        if customer == "ANSWER":
            events += _answer_events(one, [trunk])
        else:
            events.append(_dial_end(one, trunk, customer))
        hangups = [trunk.hangup(_NORMAL_CLEARING), phone.hangup(_NORMAL_CLEARING)]
        hangups += [two.hangup(_NORMAL_CLEARING), one.hangup(_NORMAL_CLEARING)]
        return SyntheticCall(
            "click", channel_id, ext, number, (ext,), tuple(events), tuple(hangups)
        )

    def inbound_calls(self, count: int, *, did: str = "5551000") -> list[SyntheticCall]:
        """``count`` answered inbound calls from different numbers, ringing 100 and 101."""
        return [
            self.inbound(
                f"1830580{3077 + index:04d}",
                caller_name=f"Caller {index + 1}",
                did=did,
                agents=("100", "101"),
            )
            for index in range(count)
        ]

    def _dialled_call(
        self, kind: str, ext: str, name: str, dialled: str, callee_prefix: str
    ) -> SyntheticCall:
        self._epoch += 2
        root = self._phone_channel(f"PJSIP/{ext}", self._internal_context, dialled, state=4)
        root.caller = (ext, name)
        callee_context = (
            self._inbound_context if callee_prefix == self._trunk else self._internal_context
        )
        callee = self._phone_channel(
            callee_prefix, callee_context, "s", state=0, linkedid=root.linkedid
        )
        events = [root.event("Newchannel"), callee.event("Newchannel")]
        callee.caller, callee.connected, callee.exten = (dialled, UNKNOWN), root.caller, dialled
        events.append(callee.event("NewCallerid"))
        callee.state = root.state = 6
        hangups = [callee.hangup(_NORMAL_CLEARING), root.hangup(_NORMAL_CLEARING)]
        ringing = (dialled,) if kind == "internal" else ()
        return SyntheticCall(
            kind, root.linkedid, ext, dialled, ringing, tuple(events), tuple(hangups)
        )

    def _agent_legs(
        self, root: _Channel, agent: str, via_local: bool, presentation: str, events: list[AmiEvent]
    ) -> list[_Channel]:
        """Append the events of one ringing agent; return its channels, first born first."""
        did = root.exten
        legs: list[_Channel] = []
        if via_local:
            one, two = self._local_pair(agent, root.linkedid)
            events += [one.event("Newchannel"), two.event("Newchannel")]
            one.caller, one.connected, one.exten = (did, UNKNOWN), root.caller, did
            two.caller, two.connected, two.presentation = root.caller, (did, UNKNOWN), presentation
            events += [one.event("NewCallerid"), two.event("NewCallerid")]
            legs += [one, two]
        phone = self._phone_channel(
            f"PJSIP/{agent}", self._internal_context, "s", state=0, linkedid=root.linkedid
        )
        events.append(phone.event("Newchannel"))
        phone.caller, phone.connected, phone.exten = (did, UNKNOWN), root.caller, did
        events.append(phone.event("NewCallerid"))
        phone.state = 5
        return [*legs, phone]

    @staticmethod
    def _leg_cause(agent: str, answerer: str | None) -> int:
        if answerer is None:
            return _NO_ANSWER
        return _NORMAL_CLEARING if agent == answerer else _ANSWERED_ELSEWHERE

    def _local_pair(self, agent: str, linkedid: str) -> tuple[_Channel, _Channel]:
        self._local_seq += 1
        base = f"Local/{agent}@{self._queue_context}-{self._local_seq:08x}"
        one = _Channel(f"{base};1", self._uniqueid(), linkedid, self._queue_context, agent, 0)
        two = replace(one, name=f"{base};2", uniqueid=self._uniqueid(), state=4)
        return one, two

    def _phone_channel(
        self, prefix: str, context: str, exten: str, *, state: int, linkedid: str | None = None
    ) -> _Channel:
        self._channel_seq += 1
        uniqueid = self._uniqueid()
        name = f"{prefix}-{self._channel_seq:08x}"
        return _Channel(name, uniqueid, linkedid or uniqueid, context, exten, state)

    def _uniqueid(self) -> str:
        self._seq += 1
        return f"{self._epoch}.{self._seq}"
