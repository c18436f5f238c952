"""What keeps the Kommo client within bounds: the request rate limiter and the lookup cache.

Both run on an injectable clock; neither does any HTTP.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import IntEnum

from kommo_callerid.core.config import CacheConfig
from kommo_callerid.core.models import LookupResult
from kommo_callerid.core.waiters import SlotExpired, Waiter, WaitQueue

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Priority(IntEnum):
    """Lower goes first: a token refresh serves every request; a notification is worth more
    than a lookup that may be cached; the call journal, durable, can always wait a little;
    the phone book's sync, a copy that is still answering, waits for everything else."""

    AUTH = -1
    NOTIFY = 0
    LOOKUP = 1
    JOURNAL = 2
    SYNC = 3


class RateLimiter:
    """At most ``floor(rate)`` requests in any 1-second window (one per ``1/rate`` s below 1).

    A request holds its slot from the moment it starts until one period after it completes:
    the server sees it arrive somewhere in between, so the server's windows can never hold
    more than the limit either.

    Waiters are served by priority. Within one, first come first served while the backlog
    clears within :data:`LIFO_AFTER` seconds; beyond that, newest first. A waiter whose
    deadline passes leaves at once, without using a slot (:class:`SlotExpired`); only the
    head waiter is ever woken, and leaving is O(1): see :class:`~kommo_callerid.core.waiters.
    WaitQueue`, which the cluster's shared limiter uses too.

    The interface other limiters (a shared Redis one) keep: ``slot(priority, deadline)``,
    ``waiting``, ``expired``.
    """

    #: Seconds of backlog beyond which the newest waiter of a priority goes first.
    LIFO_AFTER = 2.0

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        self._permits = max(1, math.floor(rate))
        self._period = 1.0 if rate >= 1 else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._running = 0
        self._finished: deque[float] = deque()
        self._waiters = WaitQueue(math.floor(self.LIFO_AFTER * rate), clock)
        self._expired_on_arrival = 0

    @property
    def waiting(self) -> int:
        return self._waiters.live

    @property
    def expired(self) -> int:
        """Requests that gave up waiting because their deadline passed (never sent)."""
        return self._waiters.expired + self._expired_on_arrival

    def slot(self, priority: Priority = Priority.LOOKUP, deadline: float | None = None) -> _Slot:
        """Hold one request slot; raises :class:`SlotExpired` when ``deadline`` (on the
        limiter's clock) passes first."""
        return _Slot(self, priority, math.inf if deadline is None else deadline)

    def take_now(self, deadline: float) -> bool:
        """Take a slot if one is free now and nobody waits (then :meth:`release` it): the
        usual case, without a coroutine."""
        waiters = self._waiters
        waiters.expire()
        if waiters.live == 0 and self._clock() < deadline and self._wait_time() == 0:
            self._running += 1
            return True
        return False

    def release(self) -> None:
        """The request in a slot (taken by :meth:`take_now` or :meth:`slot`) is done: the
        slot counts as used."""
        self._running -= 1
        self._finished.append(self._clock())
        self._waiters.wake_head()

    def give_back(self) -> None:
        """Nothing was sent in a slot taken by :meth:`take_now`: as if it was never taken."""
        self._running -= 1
        self._waiters.wake_head()

    async def _acquire(self, priority: Priority, deadline: float) -> None:
        if self.take_now(deadline):
            return
        if self._clock() >= deadline:
            self._expired_on_arrival += 1
            raise SlotExpired
        waiters = self._waiters
        waiter = waiters.enqueue(priority, deadline)
        try:
            await self._wait_turn(waiter)
        finally:
            waiters.leave(waiter)
        self._running += 1
        waiters.wake_head()

    async def _wait_turn(self, waiter: Waiter) -> None:
        waiters = self._waiters
        while True:
            if waiter.expired:
                raise SlotExpired
            if waiters.head() is waiter:
                wait = self._wait_time()
                if wait is not None and wait <= 0:
                    return
                if wait is not None:  # a slot frees in ``wait`` s (or the deadline comes)
                    await self._sleep(min(wait, max(0.0, waiter.deadline - self._clock())))
                    waiters.expire()
                    continue
            await waiters.sleep_until_woken(waiter)
            waiters.expire()

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


class _Slot(AbstractAsyncContextManager[None]):
    """:meth:`RateLimiter.slot`: a class, not ``asynccontextmanager``, as every request
    enters one (a generator-based manager costs several times as much)."""

    __slots__ = ("_deadline", "_limiter", "_priority")

    def __init__(self, limiter: RateLimiter, priority: Priority, deadline: float) -> None:
        self._limiter = limiter
        self._priority = priority
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._limiter._acquire(self._priority, self._deadline)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()


def retry_delay(attempt: int, *, base: float = 0.25, cap: float = 4.0) -> float:
    """Full-jitter backoff before retry ``attempt`` (1-based), never a hot loop."""
    ceiling = min(cap, base * 2**attempt)
    return random.uniform(ceiling / 4, ceiling)


class GateClosed(Exception):
    """The deadline passed while Kommo was pausing or blocking us."""


class RequestGate:
    """Holds every request while Kommo asks us to slow down (429) or refuses us (403).

    After a 429 everyone waits for the pause (``retry_after`` or a second). After a 403 the
    account is blocked or the IP not allowed, and more requests only prolong it: everyone
    waits a growing, jittered interval (up to a minute), then a single probe request goes
    out; the others stay held until a probe gets a non-403 answer.
    """

    BLOCK_MIN = 5.0
    BLOCK_MAX = 60.0
    POLL = 0.25

    def __init__(self, *, clock: Clock, sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0
        self._blocks = 0
        self._probing = False

    @property
    def blocked(self) -> bool:
        return self._blocks > 0

    def enter_now(self) -> bool:
        """Pass at once if a request may go out now (then as :meth:`enter`): the usual case
        takes no coroutine."""
        if self._clock() >= self._until and not self._probing:
            self._probing = self._blocks > 0
            return True
        return False

    async def enter(self, deadline: float) -> None:
        """Return when a request may go out; raise :class:`GateClosed` at ``deadline``."""
        while not self.enter_now():
            now = self._clock()
            wake = self._until if now < self._until else now + self.POLL
            if min(wake, deadline) >= deadline:
                raise GateClosed
            await self._sleep(wake - now)

    def leave(self, status: int | None, pause: float | None = None) -> None:
        """Record the answer of a request that passed :meth:`enter`."""
        self._probing = False
        now = self._clock()
        if status == 403:
            self._blocks += 1
            ceiling = min(self.BLOCK_MAX, self.BLOCK_MIN * 2 ** (self._blocks - 1))
            self._until = max(self._until, now + random.uniform(ceiling / 2, ceiling))
        elif status == 429:
            self._until = max(self._until, now + (pause if pause is not None else 1.0))
        elif status is not None and status < 500:
            self._blocks = 0

    def abandon(self) -> None:
        """The request that passed :meth:`enter` ended without an answer (cancelled)."""
        self._probing = False


@dataclass(frozen=True, slots=True)
class CacheEntry:
    result: LookupResult
    expires_at: float


class LookupCache:
    """Finished lookups by number digits; LRU-bounded, unknown numbers kept shorter."""

    def __init__(self, config: CacheConfig) -> None:
        self._config = config
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

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
        self._entries[key] = CacheEntry(result, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._config.max_entries:
            self._entries.popitem(last=False)
