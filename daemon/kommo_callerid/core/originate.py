"""The Originate port: what click-to-call asks of a PBX, and what the PBX answered.

``clicktocall/`` and ``public/`` never import ``ami/``: the daemon hands them an
:class:`Originator` (implemented in ``ami/originate.py``). Every field of a request was
validated before it got here (no line breaks, the number 3-20 digits); the AMI side checks
once more, because a header value with a line break would inject AMI headers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

#: The channel variable that marks a call as a user's click (Kommo user id), for the dialplan
#: and CDRs.
CLICK_VARIABLE = "KOMMO_CALLERID_CLICK"
#: The prefix of the Uniqueid (Originate ``ChannelId``) of a click's first channel: how the
#: call journal knows the call as the user's outbound call.
CLICK_CHANNEL_PREFIX = "kommo-click-"


@dataclass(frozen=True, slots=True)
class OriginateRequest:
    #: The PBX's name ("" for the one unnamed ``[ami]``).
    pbx: str
    channel: str
    context: str
    exten: str
    caller_id: str
    timeout_ms: int
    #: ``NAME=value`` pairs set on the new channel.
    variables: tuple[tuple[str, str], ...]
    #: The Uniqueid the first channel gets (``ChannelId``; Asterisk 13+).
    channel_id: str
    #: Seconds the caller waits for the PBX's verdict on the first leg before it takes
    #: "queued" (the phone rings) as the answer; a later verdict goes to ``later``.
    answer_within: float = 2.0


class OriginateStatus(StrEnum):
    ACCEPTED = "accepted"  # the PBX placed the call (the user's phone answered)
    QUEUED = "queued"  # the PBX took the Originate; the user's phone rings (no verdict yet)
    REFUSED = "refused"  # the PBX said no (permission, no such extension, no answer, busy)
    NOT_CONNECTED = "not_connected"  # no AMI session to that PBX now


@dataclass(frozen=True, slots=True)
class OriginateResult:
    status: OriginateStatus
    #: Why, for the log and the browser's message (never a secret).
    detail: str = ""


class Originator(Protocol):
    async def originate(
        self, request: OriginateRequest, later: Callable[[OriginateResult], None]
    ) -> OriginateResult:
        """The PBX's answer within ``request.answer_within`` (QUEUED when its verdict on the
        first leg had not come yet); that verdict, when it comes later, goes to ``later``."""
        ...
