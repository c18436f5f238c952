"""Where the Authorization header comes from: a long-lived token, or OAuth tokens that are
refreshed before they expire and once on a 401.

OAuth rules that matter (Kommo's refresh tokens are single-use):

* the token file, when present, wins over the config's first ``refresh_token``;
* concurrent refreshes collapse into one (one task, every caller awaits it);
* a refresh's answer is saved to disk (atomically, durably; see :mod:`kommo_tokens`) before
  the new access token is used — with no ``await`` between the answer and the save;
* a new pair that could not be saved is kept in memory and saved before anything else, never
  traded for another refresh (that would burn the only valid refresh token);
* a refresh token Kommo rejects is a :class:`KommoAuthError`, raised again without network
  traffic until the token file changes (``kommo-callerid authorize`` fixes it live).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from kommo_callerid.core.config import KommoConfig
from kommo_callerid.core.models import KommoAuthError, KommoError
from kommo_callerid.kommo.parse import Response, error_detail, loads_json
from kommo_callerid.kommo.tokens import TokenFile, TokenFileError, TokenPair

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oauth2/access_token"  # noqa: S105  (a URL path, not a password)
#: Refresh this long before the access token expires (Kommo's live for a day).
REFRESH_MARGIN = 300.0
#: Answers of the token endpoint that mean "this grant is dead", not "try again later".
GRANT_REJECTED = frozenset({400, 401, 403})

#: Sends a form to the token endpoint, unauthenticated, through the client's rate limit.
Exchange = Callable[[dict[str, str]], Awaitable[Response]]
WallClock = Callable[[], float]


class TokenProvider(Protocol):
    async def authorization(self) -> str:
        """The Authorization header value for the next request."""
        ...

    async def rejected(self, authorization: str) -> bool:
        """Kommo answered 401 to ``authorization``: True when a retry may now succeed."""
        ...

    async def refresh_if_due(self) -> None:
        """Renew credentials ahead of time; raises :class:`KommoAuthError` when a human must act."""
        ...

    async def close(self) -> None: ...


class StaticToken:
    """A long-lived token: nothing to refresh, a 401 is final."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def authorization(self) -> str:
        return f"Bearer {self._token.get_secret_value()}"

    async def rejected(self, authorization: str) -> bool:
        return False

    async def refresh_if_due(self) -> None:
        return None

    async def close(self) -> None:
        return None


class OAuthTokens:
    def __init__(
        self, config: KommoConfig, exchange: Exchange, *, wall_clock: WallClock = time.time
    ) -> None:
        self._config = config
        self._exchange = exchange
        self._wall = wall_clock
        self._file = TokenFile(config.token_file)
        self._pair: TokenPair | None = None
        self._unsaved: TokenPair | None = None
        self._dead: tuple[KommoAuthError, TokenPair | None] | None = None
        self._refreshing: asyncio.Task[TokenPair] | None = None

    async def authorization(self) -> str:
        return _bearer(await self._current())

    async def rejected(self, authorization: str) -> bool:
        pair = self._pair
        if pair is None or authorization != _bearer(pair):
            return True  # another request refreshed meanwhile: retry with the new token
        await self._refresh(pair)
        return True

    async def refresh_if_due(self) -> None:
        """Refresh ahead of time, so no call waits for it (the daemon calls this each minute)."""
        await self._current()

    async def authorize(self, code: str) -> None:
        """Trade an authorisation code for the first pair and save it (``authorize`` command)."""
        async with self._file.locked():
            self._adopt(await self._grant({"grant_type": "authorization_code", "code": code}))

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)

    async def _current(self) -> TokenPair:
        if self._pair is None:
            self._pair = self._initial_pair()
        if self._unsaved is not None or self._pair.expires_at - self._wall() < REFRESH_MARGIN:
            return await self._refresh(self._pair)
        return self._pair

    def _initial_pair(self) -> TokenPair:
        saved = self._load()
        if saved is not None:
            return saved
        first = self._config.refresh_token
        if not first.get_secret_value():
            raise self._reject(
                f"no OAuth tokens yet: {self._config.token_file} does not exist and "
                "kommo.refresh_token is empty; run `kommo-callerid authorize CODE` with an "
                "authorisation code from the integration's settings in Kommo"
            )
        return TokenPair(SecretStr(""), first, 0.0)  # no access token yet: refresh first

    async def _refresh(self, stale: TokenPair) -> TokenPair:
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh_once(stale), name="kommo-refresh")
            self._refreshing.add_done_callback(self._refresh_done)
        # shield: one caller giving up (its call's TTL) must not cancel everyone's refresh.
        return await asyncio.shield(self._refreshing)

    def _refresh_done(self, task: asyncio.Task[TokenPair]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: callers that gave up do not leave a warning behind

    async def _refresh_once(self, stale: TokenPair) -> TokenPair:
        if self._dead is not None:
            self._raise_if_still_dead()
        async with self._file.locked():
            if self._unsaved is not None:
                return self._adopt(self._unsaved)  # Kommo's last pair, still unsaved
            saved = self._load()
            if saved is not None and saved != stale and not self._expiring(saved):
                self._pair = saved  # another process refreshed while we waited for the lock
                return saved
            current = saved or stale
            grant = {"grant_type": "refresh_token"}
            grant["refresh_token"] = current.refresh_token.get_secret_value()
            return self._adopt(await self._grant(grant))

    async def _grant(self, fields: dict[str, str]) -> TokenPair:
        form = {
            "client_id": self._config.client_id,
            "client_secret": self._config.client_secret.get_secret_value(),
            "redirect_uri": self._config.redirect_uri,
            **fields,
        }
        response = await self._exchange(form)
        if response.status in GRANT_REJECTED:
            raise self._reject(
                f"Kommo refused the OAuth {fields['grant_type']} ({error_detail(response)}); "
                "authorise again: `kommo-callerid authorize CODE` (see README, Kommo tokens)",
                status=response.status,
            )
        if not 200 <= response.status < 300:
            raise _logged(KommoError(response.status, TOKEN_PATH, error_detail(response)))
        try:
            return TokenPair.from_grant(_json_object(response), self._wall())
        except ValueError as exc:
            detail = f"unexpected answer: {exc}"
            raise _logged(KommoError(response.status, TOKEN_PATH, detail)) from None

    def _adopt(self, pair: TokenPair) -> TokenPair:
        """Save first, use second; an unsaved pair is kept so the next refresh saves it."""
        self._unsaved = pair
        try:
            self._file.save(pair)
        except TokenFileError as exc:
            detail = f"new tokens not saved yet: {exc}"
            raise _logged(KommoError(None, TOKEN_PATH, detail)) from None
        self._unsaved = None
        self._pair = pair
        self._dead = None
        log.info(
            "kommo.token_refreshed",
            expires_in=round(pair.expires_at - self._wall()),
            token_file=str(self._file.path),
        )
        return pair

    def _load(self) -> TokenPair | None:
        try:
            return self._file.load()
        except TokenFileError as exc:
            raise self._reject(str(exc)) from None

    def _expiring(self, pair: TokenPair) -> bool:
        return pair.expires_at - self._wall() < REFRESH_MARGIN

    def _reject(self, detail: str, status: int | None = None) -> KommoAuthError:
        error = KommoAuthError(status, TOKEN_PATH, detail)
        self._dead = (error, self._safe_load())
        log.error("kommo.error", status=status, endpoint=TOKEN_PATH, detail=detail)
        return error

    def _raise_if_still_dead(self) -> None:
        assert self._dead is not None
        error, file_then = self._dead
        file_now = self._safe_load()
        if file_now is None or file_now == file_then:
            raise error
        self._dead = None  # the operator authorised again: start over from the new file
        self._pair = file_now

    def _safe_load(self) -> TokenPair | None:
        try:
            return self._file.load()
        except TokenFileError:
            return None


def _bearer(pair: TokenPair) -> str:
    return f"Bearer {pair.access_token.get_secret_value()}"


def _json_object(response: Response) -> dict[str, Any]:
    if response.oversized:
        raise ValueError("larger than any token answer")
    try:
        data = loads_json(response.body)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _logged(error: KommoError) -> KommoError:
    log.error("kommo.error", status=error.status, endpoint=error.endpoint, detail=error.detail)
    return error
