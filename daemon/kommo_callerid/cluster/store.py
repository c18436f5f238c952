"""What the daemons share besides the rate window and the claims: found callers (with a
TTL, so Redis forgets them by itself) and the OAuth pair (one JSON value, changed under a
``redis.asyncio.lock.Lock``).

A call's cache reads and writes go through ``ClusterLink.call_bounded`` (a flood's thousand
lookups queue there, not on the connection pool); the OAuth pair and its lock do not wait
behind them. Every method degrades: with Redis lost, the cache misses and puts nothing, and the pair
reads as None; callers then work from their local copies.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from redis.asyncio.lock import Lock

from kommo_callerid.cluster.link import FAILURES, ClusterLink
from kommo_callerid.core.models import Entity, EntityType, LookupResult

#: How long a daemon that started a lookup keeps the others waiting for its answer.
LEAD_TTL = 2.0
LEAD_TTL_MS = round(LEAD_TTL * 1000)


class SharedCache:
    """Found callers by number digits, shared by every daemon."""

    def __init__(self, link: ClusterLink) -> None:
        self._link = link

    def _key(self, digits: str) -> str:
        return self._link.key("lookup", digits)

    async def get(self, digits: str) -> LookupResult | None:
        if not self._link.ok:
            return None
        try:
            raw = await self._link.call_bounded(lambda: self._link.redis.get(self._key(digits)))
        except FAILURES:
            return None
        return _result(raw) if raw is not None else None

    async def put(self, digits: str, result: LookupResult, ttl: float) -> None:
        if not self._link.ok or ttl <= 0:
            return
        body = json.dumps(asdict(result))
        try:
            await self._link.call_bounded(
                lambda: self._link.redis.set(self._key(digits), body, px=round(ttl * 1000))
            )
        except FAILURES:
            return

    async def lead(self, digits: str) -> bool:
        """True: this daemon looks the number up; False: another one already is (wait for
        its answer in the cache). Single-flight across daemons, at the price of one SET NX."""
        if not self._link.ok:
            return True
        key = self._link.key("lookup-lead", digits)
        try:
            won = await self._link.call_bounded(
                lambda: self._link.redis.set(key, self._link.node, nx=True, px=LEAD_TTL_MS)
            )
        except FAILURES:
            return True
        return bool(won)


class SharedTokens:
    """The OAuth pair as one JSON object (``access_token``, ``refresh_token``, ``expires_at``)."""

    def __init__(self, link: ClusterLink) -> None:
        self._link = link
        self._key = link.key("oauth", "pair")

    @property
    def usable(self) -> bool:
        return self._link.ok

    def lock(self, timeout: float) -> Lock:
        """The refresh lock: held at most ``timeout`` s (a dead holder frees it by itself)."""
        return self._link.redis.lock(
            self._link.key("oauth", "lock"),
            timeout=timeout,
            blocking_timeout=timeout,
            sleep=0.05,
        )

    async def load(self) -> dict[str, Any] | None:
        """The shared pair; None when there is none yet. Raises a Redis error when lost."""
        raw = await self._link.call(self._link.redis.get(self._key))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    async def save(self, pair: dict[str, Any]) -> None:
        """Store the pair (no expiry: the refresh token outlives the access token)."""
        body = json.dumps(pair)
        await self._link.call(self._link.redis.set(self._key, body))


def _result(raw: bytes | str) -> LookupResult | None:
    try:
        data = json.loads(raw)
        return LookupResult(
            number=str(data["number"]),
            entity=_entity(data["entity"]),
            phone_entity=_entity(data["phone_entity"]),
            source=str(data["source"]),
            cached=True,
            ms=0.0,
        )
    except (ValueError, KeyError, TypeError):
        return None  # written by another version: a miss, looked up again


def _entity(data: Any) -> Entity | None:
    if data is None:
        return None
    responsible = data["responsible_user_id"]
    return Entity(
        EntityType(data["type"]),
        int(data["id"]),
        str(data["name"]),
        None if responsible is None else int(responsible),
    )
