"""A live AMI event's headers -> :class:`~kommo_callerid.core.models.ChannelEvent`.

This runs for every channel event a busy PBX sends, so it reads only the headers it needs
(:data:`HEADERS`, which :mod:`.protocol` decodes and nothing else) and builds the frozen
event without the dataclass's ``__init__``: that sets each of its 18 fields through
``object.__setattr__`` and was a tenth of the intake's CPU in issue 22's ingest benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields as dataclass_fields

from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

__all__ = [
    "HEADERS",
    "KINDS",
    "RECORDING_VARIABLE",
    "channel_event",
    "is_recording_file",
]

#: What the daemon makes itself, or reads from an action's answer: never a live event.
_NOT_EVENTS = frozenset({
    ChannelEventKind.LINK_LOST,
    ChannelEventKind.CHANNEL_UP,
    ChannelEventKind.CHANNELS_LISTED,
    ChannelEventKind.CHANNELS_UNKNOWN,
})  # fmt: skip
#: The live events, by lower-case AMI name.
KINDS = {kind.value.lower(): kind for kind in ChannelEventKind if kind not in _NOT_EVENTS}
#: Every header read below (lower case): the protocol decodes these alone.
HEADERS = frozenset({
    "event", "subevent",  # the kind; AMI 1.x Dial's Begin or End
    "channel", "uniqueid", "linkedid", "calleridnum", "calleridname", "context", "exten",
    "destchannel", "destuniqueid", "destlinkedid", "dialstatus", "cause", "bridgeuniqueid",
    "destination", "dialstring",  # AMI 1.x Dial
    "variable", "value",  # VarSet
})  # fmt: skip
_VARSET = ChannelEventKind.RECORDING_FILE
#: The only variable whose VarSet is used: the file MixMonitor writes.
RECORDING_VARIABLE = "MIXMONITOR_FILENAME"
#: A longer value is no file name Asterisk would write (PATH_MAX).
_MAX_RECORDING_FILE = 4096

#: ChannelEvent's fields in the order :func:`_event` takes them (checked at import).
_FIELDS = (
    "kind", "channel", "uniqueid", "linkedid", "caller_num", "caller_name", "context", "exten",
    "received_at", "dest_channel", "dest_uniqueid", "dial_status", "cause", "bridge_id", "pbx",
    "has_linkedid", "age", "recording_file",
)  # fmt: skip
if tuple(f.name for f in dataclass_fields(ChannelEvent)) != _FIELDS:
    raise ImportError("ChannelEvent's fields changed: update ami.events._event")
# Each slot's own setter: the frozen dataclass refuses setattr, its slots do not.
(
    _set_kind, _set_channel, _set_uniqueid, _set_linkedid, _set_caller_num, _set_caller_name,
    _set_context, _set_exten, _set_received_at, _set_dest_channel, _set_dest_uniqueid,
    _set_dial_status, _set_cause, _set_bridge_id, _set_pbx, _set_has_linkedid, _set_age,
    _set_recording_file,
) = (getattr(ChannelEvent, name).__set__ for name in _FIELDS)  # fmt: skip
_new = object.__new__


def _event(  # noqa: PLR0917 - one argument per field, positional: this is the fast path
    kind: ChannelEventKind,
    channel: str,
    uniqueid: str,
    linkedid: str,
    caller_num: str,
    caller_name: str,
    context: str,
    exten: str,
    received_at: float,
    dest_channel: str,
    dest_uniqueid: str,
    dial_status: str,
    cause: int,
    bridge_id: str,
    pbx: str,
    has_linkedid: bool,
) -> ChannelEvent:
    """``ChannelEvent(...)`` of a live event, at half the cost (age and recording_file left
    at their defaults)."""
    event: ChannelEvent = _new(ChannelEvent)
    _set_kind(event, kind)
    _set_channel(event, channel)
    _set_uniqueid(event, uniqueid)
    _set_linkedid(event, linkedid)
    _set_caller_num(event, caller_num)
    _set_caller_name(event, caller_name)
    _set_context(event, context)
    _set_exten(event, exten)
    _set_received_at(event, received_at)
    _set_dest_channel(event, dest_channel)
    _set_dest_uniqueid(event, dest_uniqueid)
    _set_dial_status(event, dial_status)
    _set_cause(event, cause)
    _set_bridge_id(event, bridge_id)
    _set_pbx(event, pbx)
    _set_has_linkedid(event, has_linkedid)
    _set_age(event, 0.0)
    _set_recording_file(event, "")
    return event


def channel_event(
    kind: ChannelEventKind, fields: Mapping[str, str], received_at: float, pbx: str = ""
) -> ChannelEvent | None:
    """The event, or None without a Uniqueid (it could not be tied to any call).

    A Dial started by an Originate has no dialling channel: its DestUniqueid ties it to a call.
    """
    if kind is ChannelEventKind.DIAL_LEGACY:
        return _legacy_dial(fields, received_at, pbx)
    if kind is _VARSET:
        return _recording_file(fields, received_at, pbx)
    get = fields.get
    uniqueid = get("uniqueid", "")
    dest_uniqueid = get("destuniqueid", "")
    if not (uniqueid or dest_uniqueid):
        return None
    linkedid = get("linkedid") or get("destlinkedid")  # Asterisk < 13.5 sends no Linkedid
    cause = get("cause", "")
    return _event(
        kind,
        get("channel", ""),
        uniqueid,
        linkedid or uniqueid or dest_uniqueid,
        get("calleridnum", ""),  # caller_num
        get("calleridname", ""),  # caller_name
        get("context", ""),
        get("exten", ""),
        received_at,
        get("destchannel", ""),
        dest_uniqueid,
        get("dialstatus", ""),
        int(cause) if cause.isdigit() else 0,
        get("bridgeuniqueid", ""),  # bridge_id
        pbx,
        bool(linkedid),  # has_linkedid
    )


def is_recording_file(fields: Mapping[str, str]) -> bool:
    value = fields.get("value", "")
    return (
        fields.get("variable", "") == RECORDING_VARIABLE
        and 0 < len(value) <= _MAX_RECORDING_FILE
        and "\x00" not in value
    )


def _recording_file(fields: Mapping[str, str], received_at: float, pbx: str) -> ChannelEvent | None:
    """``VarSet`` of ``MIXMONITOR_FILENAME`` on a channel: which file records it."""
    uniqueid, linkedid = fields.get("uniqueid", ""), fields.get("linkedid", "")
    if not uniqueid:
        return None
    return ChannelEvent(
        kind=_VARSET,
        channel=fields.get("channel", ""),
        uniqueid=uniqueid,
        linkedid=linkedid or uniqueid,
        caller_num="",
        caller_name="",
        context="",
        exten="",
        received_at=received_at,
        pbx=pbx,
        has_linkedid=bool(linkedid),
        recording_file=fields["value"],
    )


def _legacy_dial(
    fields: Mapping[str, str], received_at: float, pbx: str = ""
) -> ChannelEvent | None:
    """AMI 1.x ``Dial``: its Begin, as an event of the dialled channel tied to the dialler."""
    dialled, dialler = fields.get("destuniqueid", ""), fields.get("uniqueid", "")
    if not dialled or not dialler:
        return None
    return ChannelEvent(
        kind=ChannelEventKind.DIAL_LEGACY,
        channel=fields.get("destination", ""),
        uniqueid=dialled,
        linkedid=dialler,
        caller_num=fields.get("calleridnum", ""),
        caller_name=fields.get("calleridname", ""),
        context="",
        exten=fields.get("dialstring", ""),
        received_at=received_at,
        pbx=pbx,
        has_linkedid=False,
    )
