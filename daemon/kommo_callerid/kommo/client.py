"""The Kommo API client: caller lookups and call notifications.

Raw Kommo JSON stays behind this module (read by :mod:`kommo_callerid.kommo.parse`); callers
get :mod:`kommo_callerid.models` types. HTTP — rate limit, retries, authorisation — is
:mod:`kommo_callerid.kommo.transport`; this module decides what an answer means.

Size: every Kommo endpoint the product uses and what its answers mean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from types import TracebackType
from typing import Any, Self

import structlog

from kommo_callerid.cluster.limiter import Limiter
from kommo_callerid.cluster.store import SharedCache, SharedTokens
from kommo_callerid.core.config import CacheConfig, KommoConfig, LookupMode
from kommo_callerid.core.log_soon import soon
from kommo_callerid.core.models import (
    AccountInfo,
    DeadlineReached,
    Entity,
    KommoAuthError,
    KommoError,
    LookupResult,
    NotifyOutcome,
)
from kommo_callerid.kommo.auth import OAuthTokens, StaticToken, TokenProvider, WallClock
from kommo_callerid.kommo.batch import EventBatcher
from kommo_callerid.kommo.cluster_tokens import ClusterTokens
from kommo_callerid.kommo.health import HealthTracker, KommoHealth
from kommo_callerid.kommo.limits import Clock, LookupCache, Priority, Sleep
from kommo_callerid.kommo.parse import (
    BadShape,
    Response,
    error_detail,
    loads_json,
    parse_account,
    parse_by_phone,
    parse_contacts,
)
from kommo_callerid.kommo.single_flight import SingleFlight
from kommo_callerid.kommo.transport import (
    MAX_BODY_BYTES,
    BacklogExpired,
    KommoStats,
    KommoTransport,
)

__all__ = ["KommoClient", "KommoHealth", "KommoStats", "TokenProvider"]

log = structlog.get_logger(__name__)

BY_PHONE_PATH = "/api/v2/search/by_phone"
CONTACTS_PATH = "/api/v4/contacts"
EVENTS_PATH = "/api/v2/events"
ACCOUNT_PATH = "/api/v4/account"
#: How long a lookup waits for another daemon that is looking the same number up.
SHARED_LOOKUP_WAIT = 1.5
SHARED_LOOKUP_POLL = 0.05
#: What by_phone answers on accounts that do not have the v2 telephony search.
BY_PHONE_GONE = frozenset({404, 405, 410})
#: Seconds between two kommo.error lines for lookups that expired in the rate limiter's queue.
BACKLOG_LOG_INTERVAL = 10.0


class KommoClient:
    """Lookups (cached, single-flight) and notifications, within Kommo's rate limit."""

    def __init__(
        self,
        config: KommoConfig,
        cache: CacheConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: WallClock = time.time,
        token_provider: TokenProvider | None = None,
        on_secret: Callable[[str], None] | None = None,
        limiter: Limiter | None = None,
        shared_cache: SharedCache | None = None,
        shared_tokens: SharedTokens | None = None,
        warm: bool = True,
    ) -> None:
        """``on_secret`` learns every OAuth token as it arrives (the log scrubber's remember);
        ``warm``: keep warm connections for the hot path (not in a one-shot command)."""
        self._config = config
        self._clock = clock
        self.stats = KommoStats()
        self._http = KommoTransport(
            config,
            StaticToken(config.access_token),
            self.stats,
            clock=clock,
            sleep=sleep,
            limiter=limiter,
            warm=warm,
        )
        self._batcher = EventBatcher(self._http, clock)
        self._shared = shared_cache
        self._cache_config = cache
        if token_provider is not None:
            self._http.auth = token_provider
        elif config.oauth and shared_tokens is not None:
            self._http.auth = ClusterTokens(
                config,
                self._http.exchange_tokens,
                shared_tokens,
                wall_clock=wall_clock,
                on_secret=on_secret,
            )
        elif config.oauth:
            tokens = OAuthTokens(config, self._http.exchange_tokens, wall_clock=wall_clock)
            if on_secret is not None:
                tokens.on_secret = on_secret
            self._http.auth = tokens
        self._cache = LookupCache(cache)
        self._inflight: SingleFlight[str, LookupResult] = SingleFlight()
        self._backlog_logged_at = float("-inf")
        self._backlog_unlogged = 0
        self._by_phone_gone = False
        self._health = HealthTracker()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ensure_credentials(self) -> None:
        """OAuth: load the token file and refresh the pair if it is due, so no call waits for
        a refresh (the daemon calls this at start-up and every minute). Raises
        :class:`KommoAuthError` when a human has to act, :class:`KommoError` when Kommo
        could not be reached."""
        try:
            await self._http.auth.refresh_if_due()
        except KommoAuthError as exc:
            self._health.auth_failed(exc)
            raise
        self._health.credentials_usable()

    async def authorize(self, code: str) -> None:
        """Trade an authorisation code for the first OAuth pair and save it."""
        if not isinstance(self._http.auth, OAuthTokens):
            raise ValueError("authorize needs OAuth: set client_id, client_secret, redirect_uri")
        await self._http.auth.authorize(code)

    async def close(self) -> None:
        leaders = [t for t in self._inflight.cancel_all() if t is not asyncio.current_task()]
        await asyncio.gather(*leaders, return_exceptions=True)
        await self._http.auth.close()
        await self._http.close()

    @property
    def transport(self) -> KommoTransport:
        """The one transport (rate limit, gate, token) for the other Kommo endpoints."""
        return self._http

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def table_sizes(self) -> dict[str, int]:
        return {
            "cache": len(self._cache),
            "inflight": len(self._inflight),
            **self._http.table_sizes(),
        }

    @property
    def blocked(self) -> bool:
        """Kommo answered 403 and has not accepted a request since."""
        return self._http.gate.blocked

    @property
    def health(self) -> KommoHealth:
        """Whether a notification could go out now (``/healthz``)."""
        return self._health.state(blocked=self.blocked, now=self._clock())

    async def lookup(self, number: str, *, within: float | None = None) -> LookupResult:
        """Who is calling, retrying for up to ``within`` seconds (default: one request
        timeout); raises :class:`KommoError` (already logged) when Kommo fails."""
        key = _digits(number)
        if not key:
            raise ValueError("a number to look up needs digits")
        started = self._clock()
        self.stats.lookups += 1
        cached = self._cache.get(key, started)
        if cached is not None:
            self.stats.cache_hits += 1
            # Built, not replace()d: this is a warm call's path to its notification.
            result = LookupResult(
                number=number,
                entity=cached.entity,
                phone_entity=cached.phone_entity,
                source=cached.source,
                cached=True,
                ms=self._ms_since(started),
            )
        else:
            deadline = started + (within if within is not None else self._config.timeout)
            try:
                found = await self._shared_fetch(key, deadline)
            except KommoError:
                self.stats.lookups_failed += 1
                raise
            result = replace(found, number=number, ms=self._ms_since(started))
        self.stats.lookup_seconds.observe(result.ms / 1000)
        _log_lookup(result)
        return result

    async def notify(
        self, number: str, users: Sequence[int] | None, *, within: float
    ) -> NotifyOutcome:
        """Pop the call up for ``users`` (None: everyone), retrying for up to ``within``
        seconds; logs ``kommo.notified`` or ``kommo.notify_dropped``."""
        recipients = list(users) if users is not None else None
        event: dict[str, Any] = {"type": "phone_call", "phone_number": number}
        if recipients is not None:
            event["users"] = recipients
        started = self._clock()
        try:
            if within <= 0:
                raise DeadlineReached(None, EVENTS_PATH, "the call's notify_ttl had passed", 0)
            response, batch = await self._send_event(event, started + within)
        except DeadlineReached as exc:
            self._health.notification_expired(self._clock())
            return self._dropped(NotifyOutcome.DROPPED_TTL, recipients, exc, exc.attempts)
        except KommoAuthError as exc:
            self._health.auth_failed(exc)
            return self._dropped(NotifyOutcome.REJECTED, recipients, exc, 1)
        except KommoError as exc:
            return self._dropped(NotifyOutcome.REJECTED, recipients, exc, 1)
        self._health.answered(response.status)
        if not 200 <= response.status < 300:
            error = self._failure(response.status, EVENTS_PATH, error_detail(response))
            return self._dropped(NotifyOutcome.REJECTED, recipients, error, response.attempts)
        self.stats.notifications_sent += 1
        self._health.notification_sent()
        log.info(
            "kommo.notified",
            users=recipients,
            ms=self._ms_since(started),
            attempt=response.attempts,
            batch=batch,
        )
        return NotifyOutcome.SENT

    async def _send_event(self, event: dict[str, Any], deadline: float) -> tuple[Response, int]:
        """Written at once when nothing waits (see ``KommoTransport.send_now``); else in a
        batch with the notifications that wait for the rate limit with it."""
        sending = None
        if not self._batcher.gathering:  # (its leader waits for a slot: this joins it)
            sending = self._http.send_now(EVENTS_PATH, {"add": [event]}, Priority.NOTIFY, deadline)
        if sending is None:
            return await self._batcher.send(event, deadline)
        return await sending, 1

    def _dropped(
        self, outcome: NotifyOutcome, users: list[int] | None, error: KommoError, attempts: int
    ) -> NotifyOutcome:
        self.stats.notifications_failed += 1
        log.warning(
            "kommo.notify_dropped",
            reason=str(outcome),
            users=users,
            status=error.status,
            detail=error.detail,
            attempts=attempts,
        )
        return outcome

    async def account(self) -> AccountInfo:
        """The account the token belongs to; raises :class:`KommoError` (already logged)."""
        response = await self._request(
            "GET", ACCOUNT_PATH, deadline=self._deadline(), max_attempts=1
        )
        data = self._decode(response)
        if data is None:
            raise self._failure(response.status, ACCOUNT_PATH, "empty answer")
        try:
            return parse_account(data)
        except BadShape as exc:
            detail = f"unexpected answer: {exc}"
            raise self._failure(response.status, ACCOUNT_PATH, detail) from None

    async def _shared_fetch(self, key: str, deadline: float) -> LookupResult:
        return await self._inflight.run(key, partial(self._fetch, key, deadline))

    async def _fetch(self, key: str, deadline: float) -> LookupResult:
        if self._shared is not None:
            shared = await self._from_cluster(key, deadline)
            if shared is not None:
                return shared
        started = self._clock()
        found = None
        if self._config.lookup is not LookupMode.CONTACTS and not self._by_phone_gone:
            found = await self._search_by_phone(key, deadline)
        source = "by_phone" if found is not None else "contacts"
        if found is None:
            found = await self._search_contacts(key, deadline)
        entity, phone_entity = found
        result = LookupResult(
            number=key,
            entity=entity,
            phone_entity=phone_entity,
            source=source,
            cached=False,
            ms=self._ms_since(started),
        )
        self._cache.put(key, result, self._clock())
        if self._shared is not None:
            ttl = self._cache_config.ttl if entity else self._cache_config.negative_ttl
            await self._shared.put(key, result, ttl)
        return result

    async def _from_cluster(self, key: str, deadline: float) -> LookupResult | None:
        """Another daemon's answer: cached in Redis, or awaited while it looks it up."""
        assert self._shared is not None
        found = await self._shared.get(key)
        if found is None and not await self._shared.lead(key):
            give_up = min(deadline, self._clock() + SHARED_LOOKUP_WAIT)
            while found is None and self._clock() < give_up:
                await asyncio.sleep(SHARED_LOOKUP_POLL)
                found = await self._shared.get(key)
        if found is not None:
            self.stats.cache_hits += 1
            self._cache.put(key, found, self._clock())
        return found

    async def _search_by_phone(
        self, key: str, deadline: float
    ) -> tuple[Entity | None, Entity | None] | None:
        """The by_phone answer, or None when "auto" has to fall back to the contacts search."""
        response = await self._request(
            "GET", BY_PHONE_PATH, params={"phone": key}, deadline=deadline
        )
        if response.status in BY_PHONE_GONE and self._config.lookup is LookupMode.AUTO:
            if not self._by_phone_gone:
                self._by_phone_gone = True
                log.warning(
                    "kommo.error",
                    status=response.status,
                    endpoint=BY_PHONE_PATH,
                    detail="by_phone search unavailable; using the contacts search from now on",
                )
            return None
        data = self._decode(response)
        return self._parse(response, parse_by_phone, data)

    async def _search_contacts(
        self, key: str, deadline: float
    ) -> tuple[Entity | None, Entity | None]:
        response = await self._request(
            "GET", CONTACTS_PATH, params={"query": key}, deadline=deadline
        )
        data = self._decode(response)
        return self._parse(response, parse_contacts, data)

    def _parse(
        self,
        response: Response,
        parser: Callable[[Any], tuple[Entity | None, Entity | None]],
        data: Any,
    ) -> tuple[Entity | None, Entity | None]:
        if data is None:
            return None, None
        try:
            return parser(data)
        except BadShape as exc:
            raise self._failure(
                response.status, response.path, f"unexpected answer: {exc}"
            ) from None
        except Exception as exc:  # never crash on input: the parsers' tests say this is dead code
            detail = f"unexpected answer: {type(exc).__name__}"
            raise self._failure(response.status, response.path, detail) from None

    def _decode(self, response: Response) -> Any:
        """The JSON of a 2xx answer; None when it has no body (nothing found)."""
        if not 200 <= response.status < 300:
            raise self._failure(response.status, response.path, error_detail(response))
        if response.oversized:
            detail = f"answer larger than {MAX_BODY_BYTES} bytes"
            raise self._failure(response.status, response.path, detail)
        if response.status == 204 or not response.body.strip():
            return None
        if "json" not in response.content_type:
            detail = f"unexpected content type {response.content_type or 'none'}"
            raise self._failure(response.status, response.path, detail)
        try:
            return loads_json(response.body)
        except ValueError:
            raise self._failure(response.status, response.path, "invalid JSON") from None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        params: dict[str, str] | None = None,
        max_attempts: int | None = None,
    ) -> Response:
        try:
            response = await self._http.request(
                method, path, params=params, deadline=deadline, max_attempts=max_attempts
            )
        except BacklogExpired as exc:
            self._log_backlog(path, exc.detail)
            raise KommoError(exc.status, path, exc.detail) from None
        except DeadlineReached as exc:
            raise self._failure(exc.status, path, exc.detail) from None
        except KommoAuthError as exc:
            self._health.auth_failed(exc)
            raise
        self._health.answered(response.status)
        return response

    def _log_backlog(self, path: str, detail: str) -> None:
        """A flood expires lookups by the thousand: one line per interval says how many."""
        now = self._clock()
        if now - self._backlog_logged_at < BACKLOG_LOG_INTERVAL:
            self._backlog_unlogged += 1
            return
        log.error(
            "kommo.error",
            status=None,
            endpoint=path,
            detail=detail,
            repeated=self._backlog_unlogged,
        )
        self._backlog_logged_at, self._backlog_unlogged = now, 0

    def _deadline(self) -> float:
        return self._clock() + self._config.timeout

    def _failure(self, status: int | None, endpoint: str, detail: str) -> KommoError:
        log.error("kommo.error", status=status, endpoint=endpoint, detail=detail)
        return KommoError(status, endpoint, detail)

    def _ms_since(self, started: float) -> float:
        return round((self._clock() - started) * 1000, 1)


def _log_lookup(result: LookupResult) -> None:
    """After the caller's next step (the notification it is about to write): see log_soon.
    The line's fields are gathered there too."""
    soon(_lookup_line, result)


def _lookup_line(result: LookupResult) -> None:
    entity = result.entity
    log.info(
        "kommo.lookup",
        entity_type=entity.type.value if entity else None,
        entity_id=entity.id if entity else None,
        name=entity.name if entity else None,
        responsible_user_id=result.responsible_user_id,
        cached=result.cached,
        ms=result.ms,
        source="kommo",
    )


def _digits(number: str) -> str:
    # The usual number (E.164 or digits, as normalize_number makes it) takes no loop.
    bare = number[1:] if number[:1] == "+" else number
    if bare.isdigit():
        return bare
    return "".join(filter(str.isdigit, number))
