"""The Kommo API client: caller lookups and call notifications.

Raw Kommo JSON stays in this module; callers get :mod:`kommo_callerid.models` types. Every
HTTP request goes through ``KommoClient._request``: the one place for the rate limit, the
Authorization header, the body size cap, the counters and transport errors.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import partial
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import structlog
from pydantic import SecretStr

from kommo_callerid import __version__
from kommo_callerid.config import CacheConfig, KommoConfig, LookupMode
from kommo_callerid.models import Entity, EntityType, KommoError, LookupResult

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BY_PHONE_PATH = "/api/v2/search/by_phone"
CONTACTS_PATH = "/api/v4/contacts"
EVENTS_PATH = "/api/v2/events"
#: Kommo's answers are small; anything bigger is not an answer we can use.
MAX_BODY_BYTES = 1 << 20
DETAIL_CHARS = 200
#: What by_phone answers on accounts that do not have the v2 telephony search.
BY_PHONE_GONE = frozenset({404, 405, 410})

_TYPE_CODES = {
    1: EntityType.CONTACT,
    2: EntityType.LEAD,
    3: EntityType.COMPANY,
    12: EntityType.CUSTOMER,
}
_TYPE_NAMES = {kind.value: kind for kind in EntityType} | {
    "contacts": EntityType.CONTACT,
    "leads": EntityType.LEAD,
    "companies": EntityType.COMPANY,
    "customers": EntityType.CUSTOMER,
}
_PHONE_OWNERS = (EntityType.CONTACT, EntityType.COMPANY)


class Priority(IntEnum):
    """Lower goes first: a notification is worth more than a lookup that may be cached."""

    NOTIFY = 0
    LOOKUP = 1


class RateLimiter:
    """At most ``floor(rate)`` requests in any 1-second window (one per ``1/rate`` s below 1).

    A request holds its slot from the moment it starts until one period after it completes:
    the server sees it arrive somewhere in between, so the server's windows can never hold
    more than the limit either. Waiters are served by priority, then first come first served.
    """

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        self._permits = max(1, math.floor(rate))
        self._period = 1.0 if rate >= 1 else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._running = 0
        self._finished: deque[float] = deque()
        self._queue: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._changed = asyncio.Event()

    @asynccontextmanager
    async def slot(self, priority: Priority = Priority.LOOKUP) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._running -= 1
            self._finished.append(self._clock())
            self._wake_all()

    async def _acquire(self, priority: Priority) -> None:
        ticket = (int(priority), next(self._tickets))
        heapq.heappush(self._queue, ticket)
        try:
            while True:
                wait = self._wait_time() if self._queue[0] == ticket else None
                if wait is not None and wait <= 0:
                    break
                if wait is None:
                    await self._changed.wait()
                else:
                    await self._sleep(wait)
        except BaseException:
            self._queue.remove(ticket)
            heapq.heapify(self._queue)
            self._wake_all()
            raise
        heapq.heappop(self._queue)
        self._running += 1
        self._wake_all()

    def _wait_time(self) -> float | None:
        """0 when a slot is free, seconds until one frees, or None: wait for a release."""
        now = self._clock()
        while self._finished and self._finished[0] + self._period <= now:
            self._finished.popleft()
        if self._running + len(self._finished) < self._permits:
            return 0.0
        if self._finished:
            return self._finished[0] + self._period - now
        return None

    def _wake_all(self) -> None:
        # A fresh Event per change is a broadcast: every current waiter re-checks once.
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(slots=True)
class KommoStats:
    """Counters for ``stats`` log lines and /metrics. ``requests`` status None: no answer."""

    requests: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    lookups: int = 0
    lookups_failed: int = 0
    cache_hits: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    result: LookupResult
    expires_at: float


class _LookupCache:
    """Finished lookups by number digits; LRU-bounded, unknown numbers kept shorter."""

    def __init__(self, config: CacheConfig) -> None:
        self._config = config
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> LookupResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.result

    def put(self, key: str, result: LookupResult, now: float) -> None:
        ttl = self._config.ttl if result.entity else self._config.negative_ttl
        if ttl <= 0:
            return
        self._entries[key] = _CacheEntry(result, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._config.max_entries:
            self._entries.popitem(last=False)


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


@dataclass(frozen=True, slots=True)
class _Response:
    path: str
    status: int
    content_type: str
    body: bytes


class _BadShape(ValueError):
    """The JSON parsed but is not what Kommo documents."""


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
        self._cache = _LookupCache(cache)
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
                raise self._failure(response.status, EVENTS_PATH, _error_detail(response))
        except KommoError:
            self.stats.notifications_failed += 1
            return False
        self.stats.notifications_sent += 1
        recipients = list(users) if users is not None else None
        log.info("kommo.notified", users=recipients, ms=self._ms_since(started), attempt=1)
        return True

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
        return self._parse(response, _parse_by_phone, data)

    async def _search_contacts(self, key: str) -> tuple[Entity | None, Entity | None]:
        response = await self._request("GET", CONTACTS_PATH, params={"query": key})
        data = self._decode(response)
        return self._parse(response, _parse_contacts, data)

    def _parse(
        self,
        response: _Response,
        parser: Callable[[Any], tuple[Entity | None, Entity | None]],
        data: Any,
    ) -> tuple[Entity | None, Entity | None]:
        if data is None:
            return None, None
        try:
            return parser(data)
        except _BadShape as exc:
            raise self._failure(
                response.status, response.path, f"unexpected answer: {exc}"
            ) from None

    def _decode(self, response: _Response) -> Any:
        """The JSON of a 2xx answer; None when it has no body (nothing found)."""
        if not 200 <= response.status < 300:
            raise self._failure(response.status, response.path, _error_detail(response))
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
    ) -> _Response:
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
        return _Response(path, status, content_type, body)

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


def _error_detail(response: _Response) -> str:
    """problem+json's detail or title when present, else a word on what came back."""
    try:
        data = json.loads(response.body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "title"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])[:DETAIL_CHARS]
    return f"HTTP {response.status} ({response.content_type or 'no content type'})"


def _parse_by_phone(data: Any) -> tuple[Entity | None, Entity | None]:
    items = _embedded_list(data, "items")
    if not items:
        return None, None
    item = items[0]
    if not isinstance(item, dict):
        raise _BadShape("an item is not an object")
    entity = _parse_entity(item, _parse_type(item.get("type")))
    if entity.type in _PHONE_OWNERS:
        return entity, None
    return entity, _parse_phone_entity(item.get("phone_entity"))


def _parse_contacts(data: Any) -> tuple[Entity | None, Entity | None]:
    contacts = [item for item in _embedded_list(data, "contacts") if isinstance(item, dict)]
    if not contacts:
        return None, None
    # by_phone picks the oldest record when several share a number; do the same here.
    oldest = min(contacts, key=_age)
    return _parse_entity(oldest, EntityType.CONTACT), None


def _age(item: dict[str, Any]) -> tuple[float, float]:
    created_at = _positive_int(item.get("created_at"))
    id_ = _positive_int(item.get("id"))
    return (created_at or math.inf, id_ or math.inf)


def _parse_phone_entity(raw: Any) -> Entity | None:
    # Lenient on purpose: a lead without its contact still names the responsible user.
    if not isinstance(raw, dict):
        return None
    try:
        entity = _parse_entity(raw, _parse_type(raw.get("type")))
    except _BadShape:
        return None
    return entity if entity.type in _PHONE_OWNERS else None


def _embedded_list(data: Any, key: str) -> list[Any]:
    embedded = data.get("_embedded") if isinstance(data, dict) else None
    found = embedded.get(key) if isinstance(embedded, dict) else None
    if not isinstance(found, list):
        raise _BadShape(f"no _embedded.{key} list")
    return found


def _parse_type(raw: Any) -> EntityType:
    if isinstance(raw, str):
        raw = int(raw) if raw.strip().isdigit() else raw.strip().lower()
    found = _TYPE_NAMES.get(raw) if isinstance(raw, str) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        found = _TYPE_CODES.get(raw)
    if found is None:
        raise _BadShape(f"unknown entity type {str(raw)[:40]!r}")
    return found


def _parse_entity(item: dict[str, Any], kind: EntityType) -> Entity:
    id_ = _positive_int(item.get("id"))
    if id_ is None:
        raise _BadShape(f"a {kind.value} without a valid id")
    name = item.get("name")
    name = name.strip() if isinstance(name, str) else ""
    return Entity(
        type=kind,
        id=id_,
        name=name or f"{kind.value.title()} #{id_}",
        responsible_user_id=_positive_int(item.get("responsible_user_id")),
    )


def _positive_int(raw: Any) -> int | None:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    return None
