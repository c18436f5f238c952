"""Whether call notifications can go out now: the ``kommo`` field of ``/healthz``.

Fed by the client with what its requests met; the first problem that stops a notification
wins: credentials (refused, or a token file the service cannot read), a blocked account,
then a backlog (the last notification expired before it could be sent).
"""

from __future__ import annotations

from enum import StrEnum

from kommo_callerid.core.models import KommoAuthError
from kommo_callerid.kommo.auth import TokenFileUnusable


class KommoHealth(StrEnum):
    OK = "ok"
    #: Kommo refuses our credentials (a 401, or a refresh token it rejected).
    UNAUTHORISED = "unauthorised"
    #: The OAuth token file (or its lock) cannot be read by the service.
    TOKEN_UNREADABLE = "token_unreadable"  # noqa: S105  (a state name, not a password)
    #: Kommo answered 403: the account is blocked or the API closed to this IP.
    BLOCKED = "blocked"
    #: The last notification, in the last :data:`BACKLOG_WINDOW` seconds, was dropped
    #: because its call's ``notify_ttl`` passed.
    BACKLOG = "backlog"


#: A dropped notification stops counting after this long without another call (a quiet night
#: after one slow minute is no outage).
BACKLOG_WINDOW = 300.0


class HealthTracker:
    def __init__(self) -> None:
        self._auth_problem: KommoHealth | None = None
        #: Monotonic time of the last notification dropped for its TTL, while none went out.
        self._expired_at: float | None = None

    def state(self, *, blocked: bool, now: float) -> KommoHealth:
        if self._auth_problem is not None:
            return self._auth_problem
        if blocked:
            return KommoHealth.BLOCKED
        if self._expired_at is not None and now - self._expired_at < BACKLOG_WINDOW:
            return KommoHealth.BACKLOG
        return KommoHealth.OK

    def answered(self, status: int) -> None:
        if 200 <= status < 300:
            self._auth_problem = None
        elif status == 401:
            self._auth_problem = KommoHealth.UNAUTHORISED

    def auth_failed(self, error: KommoAuthError) -> None:
        unreadable = isinstance(error, TokenFileUnusable)
        self._auth_problem = (
            KommoHealth.TOKEN_UNREADABLE if unreadable else KommoHealth.UNAUTHORISED
        )

    def credentials_usable(self) -> None:
        """The token file could be read again (a 2xx clears a refused token)."""
        if self._auth_problem is KommoHealth.TOKEN_UNREADABLE:
            self._auth_problem = None

    def notification_sent(self) -> None:
        self._expired_at = None

    def notification_expired(self, now: float) -> None:
        self._expired_at = now
