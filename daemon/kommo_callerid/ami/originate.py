"""Click-to-call's Originate on a PBX: the :class:`~kommo_callerid.core.originate.Originator`
port, over the PBX's live AMI session.

One ``Originate`` action, ``Async: true``: Asterisk answers "successfully queued" at once and
sends an ``OriginateResponse`` event with the same ActionID when the first leg (the user's
phone) answered or failed, which is up to the ring timeout later. The browser is not held that
long: the answer is what came within the request's ``answer_within`` (a refusal, a channel that
failed at once — an unregistered extension fails within milliseconds — or a phone that answered
quickly), else "queued" (the phone rings). An OriginateResponse that comes later goes to the
caller's ``later``; it is awaited up to the ring timeout plus :data:`ANSWER_MARGIN`. The values
were validated by ``clicktocall/``; a value with a line break is still refused here, because it
would inject AMI headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.core.models import AmiConnectionError
from kommo_callerid.core.originate import OriginateRequest, OriginateResult, OriginateStatus

#: Seconds beyond the ring timeout that Asterisk gets to send its OriginateResponse.
ANSWER_MARGIN = 5.0
#: OriginateResponse ``Reason`` codes (Asterisk's AST_CONTROL_*): what the browser is told.
REASONS = {
    "0": "the PBX could not place the call (no such extension or channel)",
    "1": "your phone hung up",
    "3": "your phone rang but was not answered",
    "5": "your phone is busy",
    "8": "the PBX is congested",
}


def originate_action(request: OriginateRequest) -> dict[str, str]:
    action = {
        "Action": "Originate",
        "Channel": request.channel,
        "Context": request.context,
        "Exten": request.exten,
        "Priority": "1",
        "Async": "true",
        "Timeout": str(request.timeout_ms),
        "CallerID": request.caller_id,
        "ChannelId": request.channel_id,
    }
    if request.variables:
        action["Variable"] = ",".join(f"{name}={value}" for name, value in request.variables)
    for value in action.values():
        if not value.isprintable():
            raise ValueError("an Originate value holds a line break or a control character")
    return action


class AmiOriginator:
    def __init__(self, clients: Mapping[str, Callable[[], AmiClient | None]]) -> None:
        """``clients``: per PBX name, its logged-in session's client now (or None)."""
        self._clients = clients

    async def originate(
        self, request: OriginateRequest, later: Callable[[OriginateResult], None]
    ) -> OriginateResult:
        current = self._clients.get(request.pbx)
        client = current() if current is not None else None
        where = f"PBX {request.pbx}" if request.pbx else "the PBX"
        if client is None:
            return OriginateResult(OriginateStatus.NOT_CONNECTED, f"{where} is not connected")
        try:
            action = originate_action(request)
        except ValueError as exc:
            return OriginateResult(OriginateStatus.REFUSED, str(exc))
        timeout = request.timeout_ms / 1000 + ANSWER_MARGIN
        try:
            answer = await client.request_in_stages(
                action, request.answer_within, timeout, lambda whole: later(judge(whole))
            )
        except AmiConnectionError:
            return OriginateResult(OriginateStatus.NOT_CONNECTED, f"{where} is not connected")
        except TimeoutError:
            return OriginateResult(OriginateStatus.REFUSED, f"{where} did not answer in time")
        return judge(answer)


def judge(answer: list[dict[str, str]]) -> OriginateResult:
    first = _lower(answer[0]) if answer else {}
    if first.get("response", "").lower() != "success":
        detail = first.get("message") or "refused without a reason"
        return OriginateResult(OriginateStatus.REFUSED, f"the PBX refused: {detail}")
    for message in map(_lower, answer[1:]):
        if message.get("event", "").lower() != "originateresponse":
            continue
        if message.get("response", "").lower() == "success":
            return OriginateResult(OriginateStatus.ACCEPTED)
        reason = message.get("reason", "")
        return OriginateResult(
            OriginateStatus.REFUSED, REASONS.get(reason, f"the call failed (reason {reason})")
        )
    return OriginateResult(OriginateStatus.QUEUED)  # the phone rings; the event comes later


def _lower(message: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in message.items()}
