"""Where the Authorization header comes from: a long-lived token, or OAuth tokens that are
refreshed before they expire and once on a 401.

OAuth rules that matter (Kommo's refresh tokens are single-use):

* the token file, when present, wins over the config's first ``refresh_token``;
* a pair is refreshed within its margin of expiring: a quarter of its lifetime, at most
  five minutes (:meth:`~.tokens.TokenPair.due`), so a short-lived token is not refreshed on
  every request;
* concurrent refreshes collapse into one (one task, every caller awaits it);
* a refresh's answer is saved to disk (atomically, durably; see :mod:`.tokens`) before
  the new access token is used — with no ``await`` between the answer and the save;
* a new pair that could not be saved (disk full) is used from memory — once Kommo answered,
  it is the only valid pair — and its save is retried every :data:`SAVE_RETRY` seconds; it is
  never traded for another refresh with the spent token from the file, and the error line
  is repeated at most once a minute;
* a refresh token Kommo rejects is a :class:`KommoAuthError`, raised again without network
  traffic until the token file changes (``kommo-callerid authorize`` fixes it live);
* a token file (or its lock) the service cannot read is a :class:`TokenFileUnusable` whose
  message says how to fix it.

Size: the OAuth state machine in one place — refresh, its single flight, the save before use
and its retry, the refused grant remembered — since every rule above constrains the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from kommo_callerid.core.config import KommoConfig
from kommo_callerid.core.models import KommoAuthError, KommoError
from kommo_callerid.kommo.parse import Response, error_detail, loads_json
from kommo_callerid.kommo.tokens import TokenFile, TokenFileError, TokenLockBusy, TokenPair

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oauth2/access_token"  # noqa: S105  (a URL path, not a password)
#: Answers of the token endpoint that mean "this grant is dead", not "try again later".
GRANT_REJECTED = frozenset({400, 401, 403})
#: Seconds between attempts to save a pair that could not be saved.
SAVE_RETRY = 10.0
#: Seconds between two error lines about the same unsaved pair.
SAVE_ERROR_LOG_INTERVAL = 60.0
_OWNERSHIP_FIX = (
    "the service's user must be able to read and write it and its .lock: "
    "`systemctl restart kommo-callerid` gives the StateDirectory back to the service "
    "(DynamicUser), or chown them to the user the daemon runs as"
)

#: Sends a form to the token endpoint, unauthenticated, through the client's rate limit.
Exchange = Callable[[dict[str, str]], Awaitable[Response]]
WallClock = Callable[[], float]


class TokenFileUnusable(KommoAuthError):
    """The token file or its lock cannot be read or written by this process."""


class TokenProvider(Protocol):
    async def authorization(self) -> str:
        """The Authorization header value for the next request."""
        ...

    def authorization_now(self) -> str | None:
        """The header value if it is at hand without an await (no refresh due, nothing to
        read or save first); None: ask :meth:`authorization`."""
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
        return self.authorization_now()

    def authorization_now(self) -> str:
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
        self._save_tried_at = float("-inf")
        self._save_error_at = float("-inf")
        self._save_errors_folded = 0
        #: Called with every token value this provider learns, so logs can scrub them.
        self.on_secret: Callable[[str], None] = lambda _: None

    async def authorization(self) -> str:
        return _bearer(await self._current())

    def authorization_now(self) -> str | None:
        pair = self._pair
        if pair is None or self._unsaved is not None or pair.due(self._wall()):
            return None  # loaded, saved or refreshed first: that takes an await
        return _bearer(pair)

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
        async with self._locked():
            self._adopt(await self._grant({"grant_type": "authorization_code", "code": code}))
        if self._unsaved is not None:
            detail = f"the new tokens could not be saved to {self._file.path}"
            raise _logged(KommoError(None, TOKEN_PATH, detail))

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        if self._unsaved is not None:
            self._save_tried_at = float("-inf")
            await self._retry_save()
        if self._unsaved is not None:
            log.error(
                "kommo.error",
                status=None,
                endpoint=TOKEN_PATH,
                detail=f"the OAuth tokens could not be saved to {self._file.path} and are lost "
                "with this process; free the disk, then `kommo-callerid authorize CODE`",
            )

    async def _current(self) -> TokenPair:
        if self._pair is None:
            self._pair = self._initial_pair()
        if self._unsaved is not None:
            await self._retry_save()
        if self._pair.due(self._wall()):
            return await self._refresh(self._pair)
        return self._pair

    async def _retry_save(self) -> None:
        """Save the pair in use that is not on disk yet; at most every :data:`SAVE_RETRY` s."""
        if self._wall() - self._save_tried_at < SAVE_RETRY:
            return
        self._save_tried_at = self._wall()  # before the await: concurrent callers skip
        try:
            async with self._locked():
                if self._unsaved is not None:
                    self._adopt(self._unsaved)
        except KommoError:
            pass  # logged; the pair in memory still works

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The file lock; its failures as Kommo errors (the body raises no TokenFileError)."""
        try:
            async with self._file.locked():
                yield
        except TokenLockBusy as exc:
            raise _logged(KommoError(None, TOKEN_PATH, str(exc))) from None
        except TokenFileError as exc:
            error = TokenFileUnusable(None, TOKEN_PATH, f"{exc}; {_OWNERSHIP_FIX}")
            raise _logged(error) from None

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
        async with self._locked():
            if self._unsaved is not None:
                current = self._unsaved  # Kommo's last pair: the file's refresh token is spent
            else:
                saved = self._load()
                if saved is not None and saved != stale and saved.expires_at > self._wall():
                    # Another process refreshed while we waited for the lock: its pair is
                    # new, so it serves (even inside its margin: a refresh now would only
                    # spend the refresh token it just got).
                    self._pair = saved
                    self.on_secret(saved.access_token.get_secret_value())
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
        """Save first, use second; a pair that cannot be saved (twice in a row) is used from
        memory all the same (the old one is spent) and kept for :meth:`_retry_save`."""
        for secret in (pair.access_token, pair.refresh_token):
            self.on_secret(secret.get_secret_value())
        self._unsaved = pair
        self._pair = pair
        self._dead = None
        try:
            self._save_twice(pair)
        except TokenFileError as exc:
            self._log_unsaved(exc)
            return pair
        self._unsaved = None
        self._save_errors_folded = 0
        log.info(
            "kommo.token_refreshed",
            expires_in=round(pair.expires_at - self._wall()),
            token_file=str(self._file.path),
        )
        return pair

    def _save_twice(self, pair: TokenPair) -> None:
        try:
            self._file.save(pair)
        except TokenFileError:
            self._file.save(pair)  # a passing hiccup should not leave the pair unsaved

    def _log_unsaved(self, exc: TokenFileError) -> None:
        now = self._wall()
        if now - self._save_error_at < SAVE_ERROR_LOG_INTERVAL:
            self._save_errors_folded += 1
            return
        log.error(
            "kommo.error",
            status=None,
            endpoint=TOKEN_PATH,
            detail=f"new tokens not saved: {exc}; using them from memory and retrying the save "
            f"every {SAVE_RETRY:g} s (they are lost if the service stops before that works)",
            repeated=self._save_errors_folded,
        )
        self._save_error_at = now
        self._save_errors_folded = 0

    def _load(self) -> TokenPair | None:
        try:
            pair = self._file.load()
        except TokenFileError as exc:
            raise self._reject(str(exc), unusable=exc.unreadable) from None
        if pair is not None:
            for secret in (pair.access_token, pair.refresh_token):
                self.on_secret(secret.get_secret_value())
        return pair

    def _reject(
        self, detail: str, status: int | None = None, *, unusable: bool = False
    ) -> KommoAuthError:
        if unusable:
            error: KommoAuthError = TokenFileUnusable(
                status, TOKEN_PATH, f"{detail}; {_OWNERSHIP_FIX}"
            )
        else:
            error = KommoAuthError(status, TOKEN_PATH, detail)
        self._dead = (error, self._safe_load())
        log.error("kommo.error", status=status, endpoint=TOKEN_PATH, detail=error.detail)
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
