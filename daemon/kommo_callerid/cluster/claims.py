"""Exactly one daemon acts on a call: a claim per (call id, purpose) in Redis.

``SET key token NX PX ttl`` makes one daemon the owner; the owner renews the claim every
``ttl / 3`` while it works and, when done, replaces it with a ``done`` marker kept for
:data:`DONE_KEEP` seconds, so a daemon that sees the call late (or again after an AMI
reconnect) leaves it alone. A daemon that lost the race keeps watching: when the owner dies
its claim lapses within ``ttl`` and the first watcher to ``SET NX`` again takes over.

While Redis is lost every claim is granted locally (the daemon works alone): a call that
several daemons see is then handled by each of them (duplicates, never a lost call).

The journal claims with ``purpose="journal"``, notifications with ``"notify"``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from kommo_callerid.cluster.link import FAILURES, ClusterLink

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: How long a claim lives without renewal: how long a dead owner's call waits for a watcher.
CLAIM_TTL = 3.0
#: How long a finished call's marker stays (longer than any call's notify_ttl).
DONE_KEEP = 3600.0
DONE = b"done"
EVERYONE = "*"

RECORD = """
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
"""


class Claim:
    """This daemon owns (call id, purpose) until :meth:`finish` or :meth:`release`."""

    def __init__(self, claims: Claims | None, key: str, token: str) -> None:
        self._claims = claims
        self.key = key
        self._token = token

    @property
    def shared(self) -> bool:
        """False: granted locally while Redis was lost."""
        return self._claims is not None

    async def renew(self) -> bool:
        """Extend the claim; False when it was lost (expired and taken, or Redis gone)."""
        if self._claims is None:
            return True
        return await self._claims.run(self._claims.renew_script, self.key, self._token, True)

    async def finish(self, keep: float = DONE_KEEP) -> None:
        """Done: nobody acts on this call again for ``keep`` seconds."""
        if self._claims is not None:
            await self._claims.run(self._claims.finish_script, self.key, self._token, False, keep)

    async def record(self, users: tuple[int, ...] | None) -> None:
        """Note who was notified (None: everyone), so a daemon taking the call over after
        this one died does not notify them again."""
        if self._claims is not None:
            await self._claims.record(self.key, users)

    async def recorded(self) -> tuple[frozenset[int], bool]:
        """Who a previous owner notified, and whether it notified everyone."""
        if self._claims is None:
            return frozenset(), False
        return await self._claims.recorded(self.key)

    async def release(self) -> None:
        """Give the call up unfinished: another daemon may claim it at once."""
        if self._claims is not None:
            await self._claims.run(self._claims.release_script, self.key, self._token, False)


class Claims:
    def __init__(
        self,
        link: ClusterLink,
        *,
        ttl: float = CLAIM_TTL,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._link = link
        self.ttl = ttl
        self._sleep = sleep
        redis = link.redis
        self.renew_script = redis.register_script(RENEW)
        self.finish_script = redis.register_script(FINISH)
        self._record = redis.register_script(RECORD)
        self.release_script = redis.register_script(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"
            " return 0"
        )

    def key(self, call_id: str, purpose: str) -> str:
        return self._link.key("claim", purpose, call_id)

    async def claim(self, call_id: str, purpose: str) -> Claim | None:
        """One try: the claim, or None when another daemon holds it or has finished it."""
        key = self.key(call_id, purpose)
        if not self._link.ok:
            return Claim(None, key, "")
        token = f"{self._link.node}:{uuid.uuid4().hex}"
        try:
            won = await self._link.call(
                self._link.redis.set(key, token, nx=True, px=round(self.ttl * 1000))
            )
        except FAILURES:
            return Claim(None, key, "")
        return Claim(self, key, token) if won else None

    async def wait_claim(
        self, call_id: str, purpose: str, *, until: Callable[[], bool]
    ) -> Claim | None:
        """Claim, or watch the owner until it finishes (None), dies (we take over), or
        ``until()`` says the call no longer needs anyone (None)."""
        while True:
            won = await self.claim(call_id, purpose)
            if won is not None:
                return won
            if await self._finished(self.key(call_id, purpose)) or until():
                return None
            await self._sleep(self.ttl / 3)

    async def run(self, script: object, key: str, token: str, default: bool, *args: float) -> bool:
        """Run one of the claim scripts; ``default`` when Redis is lost."""
        if not self._link.ok:
            return default
        extra = [round(arg * 1000) for arg in args] or [round(self.ttl * 1000)]
        try:
            result = await self._link.call(
                script(keys=[key], args=[token, *extra])  # type: ignore[operator]
            )
        except FAILURES:
            return default
        return bool(result)

    async def record(self, key: str, users: tuple[int, ...] | None) -> None:
        if not self._link.ok:
            return
        members = [str(user) for user in users] if users is not None else [EVERYONE]
        sent = f"{key}:sent"
        try:
            await self._link.call(
                self._record(keys=[sent], args=[round(DONE_KEEP * 1000), *members])
            )
        except FAILURES:
            return

    async def recorded(self, key: str) -> tuple[frozenset[int], bool]:
        if not self._link.ok:
            return frozenset(), False
        try:
            members = await self._link.call(self._link.redis.smembers(f"{key}:sent"))
        except FAILURES:
            return frozenset(), False
        names = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        return frozenset(int(n) for n in names if n.isdigit()), EVERYONE in names

    async def _finished(self, key: str) -> bool:
        try:
            value = await self._link.call(self._link.redis.get(key))
        except FAILURES:
            return False
        return value == DONE
