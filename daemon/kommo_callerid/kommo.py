"""The Kommo API client: caller lookups and call notifications.

Raw Kommo JSON stays behind this module (read by :mod:`kommo_callerid.kommo_parse`); callers
get :mod:`kommo_callerid.models` types. Every HTTP request goes through
``KommoClient._request``: the one place for the rate limit
(:mod:`kommo_callerid.kommo_limits`), the Authorization header, the body size cap, the
counters and transport errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import structlog
from pydantic import SecretStr

from kommo_callerid import __version__
from kommo_callerid.config import CacheConfig, KommoConfig, LookupMode
from kommo_callerid.kommo_limits import Clock, LookupCache, Priority, RateLimiter, Sleep
from kommo_callerid.kommo_parse import (
    DETAIL_CHARS,
    BadShape,
    Response,
    error_detail,
    parse_account,
    parse_by_phone,
    parse_contacts,
)
from kommo_callerid.models import AccountInfo, Entity, KommoError, LatencyHistogram, LookupResult

log = structlog.get_logger(__name__)


BY_PHONE_PATH = "/api/v2/search/by_phone"
CONTACTS_PATH = "/api/v4/contacts"
EVENTS_PATH = "/api/v2/events"
ACCOUNT_PATH = "/api/v4/account"
#: Kommo's answers are small; anything bigger is not an answer we can use.
MAX_BODY_BYTES = 1 << 20
#: What by_phone answers on accounts that do not have the v2 telephony search.
BY_PHONE_GONE = frozenset({404, 405, 410})


@dataclass(slots=True)
class KommoStats:
    """Counters for ``stats`` log lines and /metrics. ``requests`` status None: no answer."""

    requests: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    lookups: int = 0
    lookups_failed: int = 0
    cache_hits: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0
    #: Seconds per lookup as the caller saw it (cache hits included).
    lookup_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


class TokenProvider(Protocol):
    async def authorization(self) -> str:
        """The Authorization header value for the next request."""
        ...


class StaticToken:
    """A long-lived token; an OAuth provider will refresh tokens behind the same method."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def authorization(self) -> str:
        return f"Bearer {self._token.get_secret_value()}"


class KommoClient:
    """Lookups (cached, single-flight) and notifications, within Kommo's rate limit."""

    def __init__(
        self,
        config: KommoConfig,
        cache: CacheConfig,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        token_provider: TokenProvider | None = None,
    ) -> None:
        if token_provider is None and config.oauth:
            raise ValueError("OAuth is not supported yet: set kommo.access_token")
        self._config = config
        self._auth = token_provider or StaticToken(config.access_token)
        self._clock = clock
        self._limiter = RateLimiter(config.rate_limit, clock=clock, sleep=sleep)
        self._cache = LookupCache(cache)
        self._inflight: dict[str, asyncio.Task[LookupResult]] = {}
        self._by_phone_gone = False
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.stats = KommoStats()

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    async def lookup(self, number: str) -> LookupResult:
        """Who is calling; raises :class:`KommoError` (already logged) when Kommo fails."""
        key = _digits(number)
        if not key:
            raise ValueError("a number to look up needs digits")
        started = self._clock()
        self.stats.lookups += 1
        cached = self._cache.get(key, started)
        if cached is not None:
            self.stats.cache_hits += 1
            result = replace(cached, number=number, cached=True, ms=self._ms_since(started))
        else:
            try:
                found = await self._shared_fetch(key)
            except KommoError:
                self.stats.lookups_failed += 1
                raise
            result = replace(found, number=number, ms=self._ms_since(started))
        self.stats.lookup_seconds.observe(result.ms / 1000)
        _log_lookup(result)
        return result

    async def notify(self, number: str, users: Sequence[int] | None) -> bool:
        """Pop the call up for ``users`` (None: everyone); False when Kommo did not accept it."""
        event: dict[str, Any] = {"type": "phone_call", "phone_number": number}
        if users is not None:
            event["users"] = list(users)
        started = self._clock()
        try:
            response = await self._request(
                "POST", EVENTS_PATH, payload={"add": [event]}, priority=Priority.NOTIFY
            )
            if not 200 <= response.status < 300:
                raise self._failure(response.status, EVENTS_PATH, error_detail(response))
        except KommoError:
            self.stats.notifications_failed += 1
            return False
        self.stats.notifications_sent += 1
        recipients = list(users) if users is not None else None
        log.info("kommo.notified", users=recipients, ms=self._ms_since(started), attempt=1)
        return True

    async def account(self) -> AccountInfo:
        """The account the token belongs to; raises :class:`KommoError` (already logged)."""
        response = await self._request("GET", ACCOUNT_PATH)
        data = self._decode(response)
        if data is None:
            raise self._failure(response.status, ACCOUNT_PATH, "empty answer")
        try:
            return parse_account(data)
        except BadShape as exc:
            detail = f"unexpected answer: {exc}"
            raise self._failure(response.status, ACCOUNT_PATH, detail) from None

    async def _shared_fetch(self, key: str) -> LookupResult:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(partial(self._fetch_done, key))
        # shield: a caller that gives up must not cancel the request the others wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, key: str, task: asyncio.Task[LookupResult]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch nobody awaits any more is not a warning

    async def _fetch(self, key: str) -> LookupResult:
        started = self._clock()
        found = None
        if self._config.lookup is not LookupMode.CONTACTS and not self._by_phone_gone:
            found = await self._search_by_phone(key)
        source = "by_phone" if found is not None else "contacts"
        entity, phone_entity = found if found is not None else await self._search_contacts(key)
        result = LookupResult(
            number=key,
            entity=entity,
            phone_entity=phone_entity,
            source=source,
            cached=False,
            ms=self._ms_since(started),
        )
        self._cache.put(key, result, self._clock())
        return result

    async def _search_by_phone(self, key: str) -> tuple[Entity | None, Entity | None] | None:
        """The by_phone answer, or None when "auto" has to fall back to the contacts search."""
        response = await self._request("GET", BY_PHONE_PATH, params={"phone": key})
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

    async def _search_contacts(self, key: str) -> tuple[Entity | None, Entity | None]:
        response = await self._request("GET", CONTACTS_PATH, params={"query": key})
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

    def _decode(self, response: Response) -> Any:
        """The JSON of a 2xx answer; None when it has no body (nothing found)."""
        if not 200 <= response.status < 300:
            raise self._failure(response.status, response.path, error_detail(response))
        if response.status == 204 or not response.body.strip():
            return None
        if "json" not in response.content_type:
            detail = f"unexpected content type {response.content_type or 'none'}"
            raise self._failure(response.status, response.path, detail)
        try:
            return json.loads(response.body)
        except ValueError:
            raise self._failure(response.status, response.path, "invalid JSON") from None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        payload: Any = None,
        priority: Priority = Priority.LOOKUP,
    ) -> Response:
        session = self._ensure_session()
        async with self._limiter.slot(priority):
            headers = {"Authorization": await self._auth.authorization()}
            try:
                async with session.request(
                    method,
                    self._config.base_url + path,
                    params=params,
                    json=payload,
                    headers=headers,
                    allow_redirects=False,  # never carry the token to wherever a redirect points
                ) as answer:
                    status, content_type = answer.status, answer.content_type
                    body = await _read_capped(answer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.stats.requests[path, None] += 1
                raise self._failure(None, path, self._transport_detail(exc)) from None
        self.stats.requests[path, status] += 1
        if body is None:
            raise self._failure(status, path, f"answer larger than {MAX_BODY_BYTES} bytes")
        return Response(path, status, content_type, body)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the Kommo client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
                headers={"User-Agent": f"kommo-callerid/{__version__}"},
            )
        return self._session

    def _transport_detail(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._config.timeout:g} s"
        return f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]

    def _failure(self, status: int | None, endpoint: str, detail: str) -> KommoError:
        log.error("kommo.error", status=status, endpoint=endpoint, detail=detail)
        return KommoError(status, endpoint, detail)

    def _ms_since(self, started: float) -> float:
        return round((self._clock() - started) * 1000, 1)


async def _read_capped(answer: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None when it is larger than :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _log_lookup(result: LookupResult) -> None:
    entity = result.entity
    log.info(
        "kommo.lookup",
        entity_type=entity.type.value if entity else None,
        entity_id=entity.id if entity else None,
        name=entity.name if entity else None,
        responsible_user_id=result.responsible_user_id,
        cached=result.cached,
        ms=result.ms,
    )


def _digits(number: str) -> str:
    return "".join(char for char in number if char.isdigit())
