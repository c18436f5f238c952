"""OAuth for a cluster: one token pair in Redis for every daemon, refreshed once per expiry.

The pair lives in Redis (:class:`~kommo_callerid.cluster.store.SharedTokens`); every request
reads it there (one GET on loopback, ~0.2 ms), so no daemon keeps using a pair another one
has already replaced. A refresh happens under the cluster-wide ``Lock``: the holder reads the
pair again (someone may have refreshed while it waited), trades the refresh token, stores the
new pair in Redis, and only then uses it; ``token_file`` gets a copy as a local backup.

Upgrading from one daemon: when Redis holds no pair yet, the first daemon moves its token file
(or the config's first ``refresh_token``) into Redis under the lock. After ``kommo-callerid
authorize`` wrote a new file, a rejected shared pair is replaced by the file's.

A pair is due within its margin of expiring (a quarter of its lifetime, at most five minutes:
:meth:`~.tokens.TokenPair.due`), so one refresh serves the cluster per expiry whatever the
token's lifetime; a daemon that waited for the lock uses the pair the holder stored. (The
daemons compare ``expires_at`` with their own wall clocks: keep them in NTP sync, within a
fraction of the margin.)

Redis lost: the last pair read keeps serving (a Kommo access token lives a day and is
refreshed five minutes early); no refresh is tried until Redis is back, because a daemon cut
off from the others cannot know whether they have spent the refresh token already.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import SecretStr
from redis.exceptions import LockError

from kommo_callerid.cluster.link import FAILURES
from kommo_callerid.cluster.store import SharedTokens
from kommo_callerid.core.config import KommoConfig
from kommo_callerid.core.models import KommoAuthError, KommoError
from kommo_callerid.kommo.auth import GRANT_REJECTED, TOKEN_PATH, Exchange, WallClock
from kommo_callerid.kommo.parse import error_detail
from kommo_callerid.kommo.tokens import TokenFile, TokenFileError, TokenPair

log = structlog.get_logger(__name__)

#: The refresh lock frees itself after this long if its holder died.
LOCK_TIMEOUT = 30.0


class ClusterTokens:
    """A :class:`~kommo_callerid.kommo.auth.TokenProvider` backed by Redis."""

    def __init__(
        self,
        config: KommoConfig,
        exchange: Exchange,
        shared: SharedTokens,
        *,
        wall_clock: WallClock = time.time,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        #: Learns every token as it arrives (the log scrubber's remember).
        self._on_secret = on_secret or (lambda _: None)
        self._exchange = exchange
        self._shared = shared
        self._wall = wall_clock
        self._file = TokenFile(config.token_file)
        self._pair: TokenPair | None = None
        self._refreshing: asyncio.Task[TokenPair] | None = None
        self.refreshes = 0

    async def authorization(self) -> str:
        return _bearer(await self._current())

    def authorization_now(self) -> None:
        return None  # the shared pair is read from Redis: never without an await

    async def rejected(self, authorization: str) -> bool:
        pair = await self._read()
        if pair is not None and _bearer(pair) != authorization:
            return True  # replaced meanwhile: retry with the shared pair
        await self._refresh(pair, forced=True)
        return True

    async def refresh_if_due(self) -> None:
        await self._current()

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)

    async def _current(self) -> TokenPair:
        pair = await self._read()
        if pair is None or pair.due(self._wall()):
            pair = await self._refresh(pair, forced=False)
        return pair

    async def _read(self) -> TokenPair | None:
        """The shared pair (remembered); the remembered one while Redis is lost."""
        if not self._shared.usable:
            return self._pair
        try:
            data = await self._shared.load()
        except FAILURES:
            return self._pair
        if data is None:
            return None
        pair = _pair(data)
        if pair != self._pair:
            self._remember(pair)
            if self._pair is not None:
                self._backup(pair)  # another daemon refreshed: keep this host's file current
            self._pair = pair
        return pair

    async def _refresh(self, stale: TokenPair | None, *, forced: bool) -> TokenPair:
        if self._refreshing is None:
            task = asyncio.create_task(self._refresh_shared(stale, forced), name="kommo-refresh")
            self._refreshing = task
            task.add_done_callback(self._refresh_done)
        # shield: one caller giving up (its call's TTL) must not cancel everyone's refresh.
        return await asyncio.shield(self._refreshing)

    def _refresh_done(self, task: asyncio.Task[TokenPair]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()

    async def _refresh_shared(self, stale: TokenPair | None, forced: bool) -> TokenPair:
        if not self._shared.usable:
            return self._degraded(stale)
        try:
            async with self._shared.lock(LOCK_TIMEOUT):
                return await self._refresh_locked(stale, forced)
        except LockError:
            detail = "the cluster's OAuth lock was not free"
            raise _logged(KommoError(None, TOKEN_PATH, detail)) from None
        except FAILURES:
            return self._degraded(stale)

    async def _refresh_locked(self, stale: TokenPair | None, forced: bool) -> TokenPair:
        current = await self._read()
        if current is None:
            current = self._first_pair()
            self._remember(current)
            await self._shared.save(_data(current))
            log.info("cluster.tokens_adopted", token_file=str(self._file.path))
        elif current != stale and current.expires_at > self._wall():
            # Another daemon refreshed while we waited for the lock (or since we read the
            # pair that failed): its pair is new and serves, even inside its margin, since
            # refreshing again would spend a refresh token to gain nothing.
            return current
        if not forced and not current.due(self._wall()):
            return current
        try:
            fresh = await self._grant(current)
        except KommoAuthError:
            backup = self._load_file()
            if backup is None or backup == current:
                raise
            fresh = backup  # `authorize` wrote a new pair meanwhile: it replaces the dead one
        self._remember(fresh)
        await self._shared.save(_data(fresh))  # stored for everyone before anyone uses it
        self._pair = fresh
        self._backup(fresh)
        self.refreshes += 1
        log.info(
            "kommo.token_refreshed",
            expires_in=round(fresh.expires_at - self._wall()),
            token_file=str(self._file.path),
            store="redis",
        )
        return fresh

    def _remember(self, pair: TokenPair) -> None:
        for secret in (pair.access_token, pair.refresh_token):
            if secret.get_secret_value():
                self._on_secret(secret.get_secret_value())

    def _degraded(self, stale: TokenPair | None) -> TokenPair:
        pair = stale or self._pair
        if pair is not None and pair.expires_at > self._wall():
            return pair
        raise _logged(
            KommoError(None, TOKEN_PATH, "OAuth refresh waits for Redis (the cluster's token)")
        )

    def _first_pair(self) -> TokenPair:
        saved = self._load_file()
        if saved is not None:
            return saved
        first = self._config.refresh_token
        if not first.get_secret_value():
            detail = (
                f"no OAuth tokens yet: neither Redis nor {self._file.path} holds a pair and "
                "kommo.refresh_token is empty; run `kommo-callerid authorize CODE`"
            )
            raise _logged(KommoAuthError(None, TOKEN_PATH, detail))
        return TokenPair(SecretStr(""), first, 0.0)

    async def _grant(self, current: TokenPair) -> TokenPair:
        form = {
            "client_id": self._config.client_id,
            "client_secret": self._config.client_secret.get_secret_value(),
            "redirect_uri": self._config.redirect_uri,
            "grant_type": "refresh_token",
            "refresh_token": current.refresh_token.get_secret_value(),
        }
        response = await self._exchange(form)
        if response.status in GRANT_REJECTED:
            detail = (
                f"Kommo refused the OAuth refresh_token ({error_detail(response)}); "
                "authorise again: `kommo-callerid authorize CODE`"
            )
            raise _logged(KommoAuthError(response.status, TOKEN_PATH, detail))
        if not 200 <= response.status < 300:
            raise _logged(KommoError(response.status, TOKEN_PATH, error_detail(response)))
        try:
            data = json.loads(response.body)
            return TokenPair.from_grant(data, self._wall())
        except (ValueError, TypeError, AttributeError) as exc:
            detail = f"unexpected answer: {exc}"
            raise _logged(KommoError(response.status, TOKEN_PATH, detail)) from None

    def _backup(self, pair: TokenPair) -> None:
        try:
            self._file.save(pair)
        except TokenFileError as exc:
            log.warning("kommo.error", status=None, endpoint=TOKEN_PATH, detail=str(exc))

    def _load_file(self) -> TokenPair | None:
        try:
            return self._file.load()
        except TokenFileError:
            return None


async def publish_token_file(config: KommoConfig, shared: SharedTokens) -> bool:
    """``authorize`` with a cluster: the pair just saved to ``token_file`` replaces the one in
    Redis, so every daemon uses it; False when there is no file."""
    try:
        pair = TokenFile(config.token_file).load()
    except TokenFileError:
        return False
    if pair is None:
        return False
    async with shared.lock(LOCK_TIMEOUT):
        await shared.save(_data(pair))
    return True


def _bearer(pair: TokenPair) -> str:
    return f"Bearer {pair.access_token.get_secret_value()}"


def _data(pair: TokenPair) -> dict[str, Any]:
    return {
        "access_token": pair.access_token.get_secret_value(),
        "refresh_token": pair.refresh_token.get_secret_value(),
        "expires_at": pair.expires_at,
        "lifetime": pair.lifetime,
    }


def _pair(data: dict[str, Any]) -> TokenPair:
    return TokenPair(
        SecretStr(str(data.get("access_token", ""))),
        SecretStr(str(data.get("refresh_token", ""))),
        float(data.get("expires_at", 0)),
        float(data.get("lifetime", 0)),
    )


def _logged(error: KommoError) -> KommoError:
    log.error("kommo.error", status=error.status, endpoint=error.endpoint, detail=error.detail)
    return error
