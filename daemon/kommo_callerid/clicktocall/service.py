"""One click, checked in the contract's order, then one Originate.

Order (the first that fails answers): click-to-call off (403), the token (401; 503 while the
account is not known yet), the user's extension (403), the number (400), ``min_interval``
(429), the PBX (502 refused / 503 not connected). Every request whose token passed has spent
it (its ``jti``); only a click that reached the PBX starts the user's ``min_interval``.

The browser waits at most :data:`ANSWER_WITHIN` for the PBX: 202 once the Originate is queued
and its first leg has not failed within that time (the user's phone rings, or answered), 502
when it failed within it (busy, an unregistered extension: Asterisk says so in milliseconds).
Asterisk's verdict on the first leg otherwise comes only when the phone is answered or gives
up, up to ``timeout`` later, far beyond what a browser, Kommo's ``$authorizedAjax`` or a proxy
in front waits; a failure that comes after the 202 is logged (``clicktocall.refused``, reason
``pbx``, ``late``).

No HTTP and no AMI here: ``public/`` turns a :class:`ClickAnswer` into a response, and the
PBX is an :class:`~kommo_callerid.core.originate.Originator` port the daemon hands in.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from kommo_callerid.clicktocall.numbers import NotDialable, compile_rules, dialable
from kommo_callerid.clicktocall.replay import ReplayGuard
from kommo_callerid.clicktocall.tokens import ClickToken, TokenRefused, TokenVerifier
from kommo_callerid.clicktocall.users import NoExtension, Target, extension_of
from kommo_callerid.core.config import ClickToCallConfig, NotifyConfig
from kommo_callerid.core.models import AccountInfo
from kommo_callerid.core.originate import (
    CLICK_CHANNEL_PREFIX,
    CLICK_VARIABLE,
    OriginateRequest,
    OriginateResult,
    OriginateStatus,
    Originator,
)

log = structlog.get_logger(__name__)

#: Seconds a click waits for the PBX's verdict on the user's leg before answering 202.
ANSWER_WITHIN = 2.0
#: Characters of the Kommo name shown on the user's phone.
NAME_CHARS = 40
#: What a caller ID's display name must not contain: its own quoting and brackets.
_NAME_UNSAFE = str.maketrans("", "", '"<>\\')


class NameSource(Protocol):
    """The Kommo name of a number ("" when unknown or slow): ``web.callerid.CallerIdService``."""

    async def name_for(self, raw: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ClickAnswer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    #: ``clicktocall.refused`` reason; None when the answer is not a refusal.
    reason: str | None = None


@dataclass(slots=True)
class _Pace:
    """Per user: when the last click that reached the PBX was sent (``min_interval``)."""

    last: dict[int, float] = field(default_factory=dict)

    def try_start(self, user_id: int, now: float, interval: float) -> bool:
        last = self.last.get(user_id)
        if last is not None and now - last < interval:
            return False
        self.last[user_id] = now
        return True

    def undo(self, user_id: int, started: float) -> None:
        if self.last.get(user_id) == started:
            del self.last[user_id]


class ClickToCall:
    def __init__(
        self,
        config: ClickToCallConfig,
        notify: NotifyConfig,
        pbxs: Collection[str],
        *,
        verifier: TokenVerifier,
        replay: ReplayGuard,
        originator: Originator,
        names: NameSource,
        clock: Callable[[], float],
        on_originate: Callable[[OriginateRequest, int, str, str], None] | None = None,
    ) -> None:
        """``clock``: monotonic seconds (``min_interval``). ``on_originate(request, user_id,
        extension, number)`` runs just before the Originate is sent (the call journal's mark)."""
        self._verifier = verifier
        self._replay = replay
        self._originator = originator
        self._names = names
        self._clock = clock
        self._pbxs = tuple(pbxs)
        self._on_originate = on_originate
        self._pace = _Pace()
        #: Learnt from ``GET /api/v4/account`` at start-up; until then every click is 503.
        self.account: AccountInfo | None = None
        self.reconfigure(config, notify)

    def reconfigure(self, config: ClickToCallConfig, notify: NotifyConfig) -> None:
        """SIGHUP: ``[clicktocall]`` and ``[notify] extensions`` apply to the next click."""
        self._config = config
        self._rules = compile_rules(config.dial_rules)
        self._extensions = dict(notify.extensions)

    async def me(self, token: str | None) -> ClickAnswer:
        checked = await self._user(token)
        if isinstance(checked, ClickAnswer):
            return checked
        try:
            extension: str | None = str(self._extension(checked.user_id))
        except NoExtension:
            extension = None
        return ClickAnswer(200, {"user_id": checked.user_id, "extension": extension})

    async def call(self, token: str | None, phone: object) -> ClickAnswer:
        checked = await self._user(token)
        if isinstance(checked, ClickAnswer):
            return checked
        user_id = checked.user_id
        try:
            target = self._extension(user_id)
        except NoExtension as exc:
            return _refused(403, "user", str(exc), user_id=user_id)
        try:
            number = dialable(phone if isinstance(phone, str) else "", self._rules)
        except NotDialable as exc:
            return _refused(400, "number", str(exc), user_id=user_id)
        now = self._clock()
        if not self._pace.try_start(user_id, now, self._config.min_interval):
            wait = f"clicked again within min_interval ({self._config.min_interval:g} s)"
            return _refused(429, "rate", wait, user_id=user_id)
        request = await self._request(target, number, user_id)
        if self._on_originate is not None:
            self._on_originate(request, user_id, target.extension, number)
        fields = {"user_id": user_id, "extension": str(target), "pbx": target.pbx}
        result = await self._originator.originate(
            request, lambda late: _late(late, number=number, **fields)
        )
        if result.status is OriginateStatus.NOT_CONNECTED:
            self._pace.undo(user_id, now)  # it never reached the PBX
            return _refused(503, "pbx", result.detail, number=number, **fields)
        if result.status is OriginateStatus.REFUSED:
            return _refused(502, "pbx", result.detail, number=number, **fields)
        ringing = result.status is OriginateStatus.QUEUED
        log.info("clicktocall.originated", number=number, ringing=ringing, **fields)
        return ClickAnswer(202, {"extension": target.extension, "number": number})

    async def _user(self, token: str | None) -> ClickToken | ClickAnswer:
        if not self._config.enabled:
            return _refused(403, "disabled", "[clicktocall] enabled = false")
        account = self.account
        if account is None:
            return _refused(503, "token", "the Kommo account is not known yet")
        try:
            checked = self._verifier.verify(token or "", account)
        except TokenRefused as exc:
            return _refused(401, "token", str(exc))
        if not await self._replay.first_use(checked.jti, checked.expires_at):
            return _refused(401, "token", "jti already used", user_id=checked.user_id)
        return checked

    def _extension(self, user_id: int) -> Target:
        return extension_of(user_id, self._config.users, self._extensions, self._pbxs)

    async def _request(self, target: Target, number: str, user_id: int) -> OriginateRequest:
        config = self._config
        name = caller_name(await self._names.name_for(number)) or number
        return OriginateRequest(
            pbx=target.pbx,
            channel=config.channel.format(extension=target.extension),
            context=config.context,
            exten=number,
            caller_id=config.caller_id.format(name=name, number=number),
            timeout_ms=round(config.timeout * 1000),
            variables=((CLICK_VARIABLE, str(user_id)),),
            channel_id=CLICK_CHANNEL_PREFIX + secrets.token_hex(12),
            answer_within=ANSWER_WITHIN,
        )


def caller_name(name: str) -> str:
    """A CRM name safe inside ``"name" <number>``: no controls, quotes or brackets."""
    visible = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in name)
    return " ".join(visible.translate(_NAME_UNSAFE).split())[:NAME_CHARS].rstrip()


def _late(result: OriginateResult, **fields: Any) -> None:
    """The PBX's verdict on the user's leg after the browser had its 202."""
    if result.status is OriginateStatus.REFUSED:
        log.info("clicktocall.refused", reason="pbx", detail=result.detail, late=True, **fields)


def _refused(status: int, reason: str, detail: str, **fields: Any) -> ClickAnswer:
    log.info("clicktocall.refused", reason=reason, detail=detail, status=status, **fields)
    # A refused token's reason stays in the log: the browser is not told which check failed.
    body = {"error": reason} if status == 401 else {"error": reason, "detail": detail}
    return ClickAnswer(status, body, reason)
