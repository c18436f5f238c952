"""A token is spent once: the ``jti`` replay guard.

In memory: a set of jtis with their expiry, bounded (:data:`MAX_REMEMBERED`). With
``[cluster]`` the daemon wraps it with Redis (``cluster/replay.py``: ``SET NX`` with an
expiry), so a token used on one daemon is refused by every other; this local set still
guards while Redis is unreachable. A jti is forgotten only after its token expired (plus the
leeway), when no check could accept the token any more.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Protocol

#: jtis remembered at once. A click a second for the 30 min a token lives is 1,800; past the
#: cap a new token is refused (fail closed) until old ones expire.
MAX_REMEMBERED = 100_000


class ReplayGuard(Protocol):
    async def first_use(self, jti: str, expires_at: float) -> bool:
        """True the first time ``jti`` is seen (and remembers it until ``expires_at``)."""
        ...


class MemoryReplayGuard:
    def __init__(
        self, wall_clock: Callable[[], float], *, keep_after: float, limit: int = MAX_REMEMBERED
    ) -> None:
        self._clock = wall_clock
        self._keep_after = keep_after
        self._limit = limit
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    async def first_use(self, jti: str, expires_at: float) -> bool:
        return self.remember(jti, expires_at)

    def remember(self, jti: str, expires_at: float) -> bool:
        now = self._clock()
        self._forget_expired(now)
        if jti in self._seen:
            return False
        if len(self._seen) >= self._limit:
            return False  # fail closed: a flood of valid tokens must not evict a spent one
        until = max(expires_at, now) + self._keep_after
        self._seen[jti] = until
        heapq.heappush(self._expiry, (until, jti))
        return True

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, jti = heapq.heappop(self._expiry)
            self._seen.pop(jti, None)
