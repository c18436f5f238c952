"""What keeps the Kommo client within bounds: the request rate limiter and the lookup cache.

Both run on an injectable clock; neither does any HTTP.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

from kommo_callerid.core.config import CacheConfig
from kommo_callerid.core.models import LookupResult

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Priority(IntEnum):
    """Lower goes first: a token refresh serves every request; a notification is worth more
    than a lookup that may be cached; the call journal, durable, can always wait a little."""

    AUTH = -1
    NOTIFY = 0
    LOOKUP = 1
    JOURNAL = 2


class SlotExpired(Exception):
    """The request's deadline passed while it waited: it left the queue without a slot."""


@dataclass(eq=False, slots=True)
class _Waiter:
    deadline: float
    woken: asyncio.Future[None] | None = None
    gone: bool = False  # served, cancelled or expired: its heap entries are dead
    expired: bool = False


class RateLimiter:
    """At most ``floor(rate)`` requests in any 1-second window (one per ``1/rate`` s below 1).

    A request holds its slot from the moment it starts until one period after it completes:
    the server sees it arrive somewhere in between, so the server's windows can never hold
    more than the limit either.

    Waiters are served by priority. Within one, first come first served while the backlog
    clears within :data:`LIFO_AFTER` seconds; beyond that, newest first: in a flood the
    oldest are the least likely to still be useful, and a new call must not wait behind
    a thousand. A waiter whose deadline passes leaves at once, without using a slot
    (:class:`SlotExpired`). Only the head waiter is ever woken; leaving is O(1) (dead heap
    entries are skipped, and the heaps compacted when half dead), so cancelling N waiters
    at shutdown is O(N log N), never N².

    The interface other limiters (a shared Redis one) keep: ``slot(priority, deadline)``,
    ``waiting``, ``expired``.
    """

    #: Seconds of backlog beyond which the newest waiter of a priority goes first.
    LIFO_AFTER = 2.0

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        self._permits = max(1, math.floor(rate))
        self._period = 1.0 if rate >= 1 else 1.0 / rate
        self._lifo_above = max(1, math.floor(self.LIFO_AFTER * rate))
        self._clock = clock
        self._sleep = sleep
        self._running = 0
        self._finished: deque[float] = deque()
        self._queue: list[tuple[int, int, _Waiter]] = []  # (priority, order, waiter)
        self._deadlines: list[tuple[float, int, _Waiter]] = []  # soonest first
        self._order = itertools.count(1)
        self._live = 0
        self._dead = 0
        #: Requests that gave up waiting because their deadline passed (never sent).
        self.expired = 0

    @property
    def waiting(self) -> int:
        return self._live

    @asynccontextmanager
    async def slot(
        self, priority: Priority = Priority.LOOKUP, deadline: float | None = None
    ) -> AsyncIterator[None]:
        """Hold one request slot; raises :class:`SlotExpired` when ``deadline`` (on the
        limiter's clock) passes first."""
        await self._acquire(priority, math.inf if deadline is None else deadline)
        try:
            yield
        finally:
            self._running -= 1
            self._finished.append(self._clock())
            self._wake_head()

    async def _acquire(self, priority: Priority, deadline: float) -> None:
        self._expire()
        if self._clock() >= deadline:
            self.expired += 1
            raise SlotExpired
        if self._live == 0 and self._wait_time() == 0:
            self._running += 1
            return
        waiter = self._enqueue(priority, deadline)
        try:
            await self._wait_turn(waiter)
        finally:
            self._leave(waiter)
        self._running += 1
        self._wake_head()

    def _enqueue(self, priority: Priority, deadline: float) -> _Waiter:
        waiter = _Waiter(deadline)
        order = next(self._order)
        if self._live >= self._lifo_above:
            order = -order  # a backlog: the newest goes first
        heapq.heappush(self._queue, (int(priority), order, waiter))
        if deadline < math.inf:
            heapq.heappush(self._deadlines, (deadline, order, waiter))
        self._live += 1
        return waiter

    async def _wait_turn(self, waiter: _Waiter) -> None:
        while True:
            if waiter.expired:
                raise SlotExpired
            if self._head() is waiter:
                wait = self._wait_time()
                if wait is not None and wait <= 0:
                    return
                if wait is not None:  # a slot frees in ``wait`` s (or the deadline comes)
                    await self._sleep(min(wait, max(0.0, waiter.deadline - self._clock())))
                    self._expire()
                    continue
            waiter.woken = asyncio.get_running_loop().create_future()
            await waiter.woken  # woken when it becomes the head, a slot frees, or it expires
            self._expire()

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.gone:
            return
        waiter.gone = True
        self._live -= 1
        self._dead += 1
        if self._dead > 64 and self._dead > self._live:
            self._compact()
        self._wake_head()

    def _expire(self) -> None:
        """Every waiter whose deadline has passed leaves now, and is told."""
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            waiter = heapq.heappop(self._deadlines)[2]
            if waiter.gone:
                continue
            waiter.expired = True
            self.expired += 1
            self._leave(waiter)
            _wake(waiter)

    def _head(self) -> _Waiter | None:
        queue = self._queue
        while queue and queue[0][2].gone:
            heapq.heappop(queue)
        return queue[0][2] if queue else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            _wake(head)

    def _compact(self) -> None:
        self._queue = [entry for entry in self._queue if not entry[2].gone]
        heapq.heapify(self._queue)
        self._deadlines = [entry for entry in self._deadlines if not entry[2].gone]
        heapq.heapify(self._deadlines)
        self._dead = 0

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


def _wake(waiter: _Waiter) -> None:
    if waiter.woken is not None and not waiter.woken.done():
        waiter.woken.set_result(None)


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

    async def enter(self, deadline: float) -> None:
        """Return when a request may go out; raise :class:`GateClosed` at ``deadline``."""
        while True:
            now = self._clock()
            if now >= self._until and not self._probing:
                self._probing = self.blocked
                return
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
