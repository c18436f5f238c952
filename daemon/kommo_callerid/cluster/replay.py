"""Click-to-call tokens spent once across daemons: a Redis ``SET NX`` per ``jti``.

The key is a hash of the jti (short, and the token's id is not repeated in Redis) and expires
when no daemon could accept the token any more. With Redis lost the answer is None: the
caller then relies on its own in-memory guard (a token could then be used once per daemon
until Redis is back; see README "Click-to-call").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from kommo_callerid.cluster.link import FAILURES, ClusterLink

#: At least this long, so a token that expired a moment ago still cannot be replayed.
MIN_TTL_MS = 60_000


class SharedReplayGuard:
    def __init__(
        self, link: ClusterLink, *, keep_after: float, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._link = link
        self._keep_after = keep_after
        self._clock = wall_clock

    async def first_use(self, jti: str, expires_at: float) -> bool | None:
        """True: first use anywhere; False: used before; None: Redis cannot say now."""
        if not self._link.ok:
            return None
        digest = hashlib.sha256(jti.encode()).hexdigest()[:32]
        key = self._link.key("jti", digest)
        ttl_ms = max(MIN_TTL_MS, round((expires_at + self._keep_after - self._clock()) * 1000))
        try:
            won = await self._link.call_bounded(
                lambda: self._link.redis.set(key, self._link.node, nx=True, px=ttl_ms)
            )
        except FAILURES:
            return None
        return bool(won)
