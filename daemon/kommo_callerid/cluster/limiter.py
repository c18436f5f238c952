"""One Kommo rate limit for every daemon: a sliding window of slots in Redis, one Lua script.

Kommo counts requests as they arrive; a request arrives somewhere between the moment it was
started and the moment its answer came back. So, as the local limiter does, a request holds
its slot from start until one period after it completed: any 1-second window of arrivals
then holds at most ``floor(rate)`` requests, whichever daemons sent them. The window is a
sorted set (member: the slot, score: when it frees, in Redis' own clock (µs), so the daemons'
clocks never matter); taking and releasing a slot are each one atomic script.

Priority stays per daemon: waiters queue locally (notification > lookup > journal; FIFO, then
newest first beyond ~2 s of backlog; an expired waiter leaves without a slot), in the same
:class:`~kommo_callerid.core.waiters.WaitQueue` as the local limiter, and only the head of the
queue asks Redis. While Redis is lost (:class:`~.link.ClusterLink`) requests
go through ``fallback``, a local limiter at ``rate_limit / expected_nodes``; the window keeps
that share free for every daemon that may be working so (:mod:`.presence`), and a daemon
works alone only once its last beat's promise has run out, so the daemons' switches between
the window and their shares, each at its own moment, never add up to more than ``rate``.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

from kommo_callerid.cluster.link import FAILURES, GUARD, ClusterLink
from kommo_callerid.cluster.presence import FRESH, REMEMBER, SETTLE, Presence
from kommo_callerid.core.waiters import SlotExpired, WaitQueue

Sleep = Callable[[float], Awaitable[None]]

#: The head of the queue asks Redis again at least this often while the window is full.
MAX_POLL = 0.05
MARGIN_US = 5_000
#: Seconds of backlog (at the cluster's rate) beyond which the newest waiter goes first, as
#: in ``kommo.limits.RateLimiter``.
LIFO_AFTER = 2.0

# Scores are formatted by hand: Lua would print 1.7e15 with 14 digits and lose the µs.
# KEYS: the window, the daemons' beats (.presence). ARGV: permits, lease (µs), a daemon's
# share, FRESH and REMEMBER (µs), this daemon's name, the slot's member. Guarded (link.GUARD):
# a flushed window is empty while Kommo still counts the requests it held.
# No slot frees later than a lease from now, and no beat is dated after now: such an entry
# was written before Redis' clock stepped back (or by hand), and would hold its place for as
# long as the step (a window that stays full: every request refused). The window drops them;
# a beat is dated now, so it ages from here.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fresh_since = now - tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZREMRANGEBYSCORE', KEYS[1], string.format('(%.0f', now + tonumber(ARGV[2])), '+inf')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - tonumber(ARGV[5])))
local ahead = redis.call('ZRANGEBYSCORE', KEYS[2], string.format('(%.0f', now), '+inf')
for _, node in ipairs(ahead) do
  redis.call('ZADD', KEYS[2], string.format('%.0f', now), node)
end
local away = redis.call('ZCOUNT', KEYS[2], '-inf', string.format('(%.0f', fresh_since))
local mine = redis.call('ZSCORE', KEYS[2], ARGV[6])
if mine and tonumber(mine) < fresh_since then away = away - 1 end
-- asking here is a beat: this daemon's requests all go through the window
redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[6])
redis.call('PEXPIRE', KEYS[2], math.floor(tonumber(ARGV[5]) / 1000))
local permits = math.max(1, tonumber(ARGV[1]) - away * tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) < permits then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[7])
  redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) / 1000) + 1000)
  return 0
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.ceil((tonumber(first[2]) - now) / 1000))
"""

RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + tonumber(ARGV[1])), ARGV[2])
return 0
"""


class Limiter(Protocol):
    """What the Kommo transport needs of a rate limiter (``kommo.limits.RateLimiter``)."""

    @property
    def waiting(self) -> int: ...

    @property
    def expired(self) -> int: ...

    def slot(
        self, priority: Any = ..., deadline: float | None = ...
    ) -> AbstractAsyncContextManager[None]:
        """``deadline`` (the limiter's clock): a waiter still queued then leaves without a
        slot, raising :class:`~kommo_callerid.core.waiters.SlotExpired`."""


class SharedRateLimiter:
    """``slot(priority)`` like the local limiter, counted in Redis for the whole cluster."""

    def __init__(
        self,
        link: ClusterLink,
        rate: float,
        fallback: Limiter,
        *,
        lease: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._link = link
        self._permits = max(1, math.floor(rate))
        #: The slots a daemon working alone may hold (its fallback's).
        self._share = max(1, math.floor(rate / link.config.expected_nodes))
        # Microseconds of Redis' clock; the margin absorbs the daemons' and Kommo's clocks
        # ticking apart from Redis' by a little.
        self._period_us = round(1e6 * (1.0 if rate >= 1 else 1.0 / rate)) + MARGIN_US
        #: How long a started request may hold its slot before it is presumed dead.
        self._lease_us = round(1e6 * lease) + self._period_us
        self._fallback = fallback
        self._sleep = sleep
        self._clock = clock
        self._period = self._period_us / 1e6
        #: Per mode (True: shared, False: local): requests running, and when the last one's
        #: slot frees. Switching modes waits for the other mode's slots, so the two windows
        #: never add up (Redis restarts empty; a lost Redis forgets nothing we can see).
        self._running = {True: 0, False: 0}
        self._free_at = {True: 0.0, False: 0.0}
        self._key = link.key("ratelimit")
        self._keys = [self._key, link.key("nodes")]
        #: ACQUIRE's arguments but the member (its last).
        self._args: list[int | str] = [self._permits, self._lease_us, self._share]
        self._args += [round(FRESH * 1e6), round(REMEMBER * 1e6), link.node]
        self.presence = Presence(
            link, self._all_in_window, period=self._period, clock=clock, sleep=sleep
        )
        self._acquire = link.redis.register_script(GUARD + ACQUIRE)
        self._release = link.redis.register_script(RELEASE)
        self._waiters = WaitQueue(math.floor(LIFO_AFTER * rate), clock)
        self._expired_on_arrival = 0
        #: A head's ask to Redis (or to the fallback) is in flight: no other waiter asks.
        self._asking = False
        self._entering_local = False
        self.shared_slots = 0
        self.local_slots = 0

    @property
    def waiting(self) -> int:
        return self._waiters.live + self._fallback.waiting

    @property
    def expired(self) -> int:
        """Requests that gave up waiting because their deadline passed (never sent)."""
        return self._waiters.expired + self._expired_on_arrival + self._fallback.expired

    @asynccontextmanager
    async def slot(self, priority: int = 1, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold one request slot; raises :class:`SlotExpired` when ``deadline`` (on the
        limiter's clock) passes first, in the shared queue or the local fallback's."""
        async with AsyncExitStack() as local:
            held = await self._take(priority, deadline, local)
            shared = held is not None
            self._running[shared] += 1
            try:
                if held is None:
                    self.local_slots += 1
                    yield
                else:
                    self.shared_slots += 1
                    try:
                        yield
                    finally:
                        await self._give_back(held)
            finally:
                self._running[shared] -= 1
                self._free_at[shared] = self._clock() + self._period

    def start(self) -> None:
        """Start beating (:mod:`.presence`); :meth:`stop` leaves the cluster's count."""
        self.presence.start()

    async def stop(self) -> None:
        """Leave the cluster's count once our local slots have left the window (the others
        get our share back then, not while Kommo still counts them): at most a period."""
        if self._link.ok:
            await self._sleep(max(0.0, min(self._free_at[False] - self._clock(), self._period)))
        await self.presence.stop()

    def _shared_now(self) -> bool:
        """The window, not the fallback: Redis answers and has not just come back."""
        return self._link.ok and self._clock() >= self._link.restored_at + SETTLE

    def _all_in_window(self) -> bool:
        local = self._running[False] or self._entering_local
        return self._shared_now() and not local and self._free_at[False] <= self._clock()

    def _settle(self, shared: bool) -> float:
        """Seconds until a slot may be taken in this mode (0: now): the other mode's slots
        are free, and before working alone our last beat's promise has run out."""
        other = not shared
        now = self._clock()
        wait = MAX_POLL if self._running[other] else max(0.0, self._free_at[other] - now)
        if not shared:
            wait = max(wait, self.presence.promised_until() - now)
        return wait

    async def _take(
        self, priority: int, deadline: float | None, local: AsyncExitStack
    ) -> str | None:
        """The slot's member in the shared window, or None: a slot of the local fallback,
        entered on ``local``. The head takes it while still at the head of this queue, so
        the fallback's queue holds one waiter at a time and, once Redis is back, the others
        are still here to ask it (they are not stuck behind the fallback's lower rate)."""
        waiters = self._waiters
        limit = math.inf if deadline is None else deadline
        waiters.expire()
        if self._clock() >= limit:
            self._expired_on_arrival += 1
            raise SlotExpired
        waiter = waiters.enqueue(priority, limit)
        try:
            while True:
                waiters.check(waiter)
                if waiters.head() is not waiter or self._asking:
                    await waiters.sleep_until_woken(waiter)  # the head, once it asked, wakes us
                    continue
                shared = self._shared_now()
                settle = self._settle(shared)
                if settle > 0:
                    await self._nap(settle, limit)
                    continue
                if not shared:
                    await self._take_local(priority, deadline, local)
                    return None
                member = uuid.uuid4().hex
                try:
                    wait_ms = await self._ask(member)
                except FAILURES:
                    continue  # degraded now: go local once our shared slots have freed
                if wait_ms == 0:
                    return member
                await self._nap(wait_ms / 1000, limit)
        finally:
            waiters.leave(waiter)  # O(1); wakes the next head

    async def _take_local(
        self, priority: int, deadline: float | None, local: AsyncExitStack
    ) -> None:
        self._asking = True  # no other waiter goes to the fallback meanwhile
        # A slot the fallback grants after Redis came back is still a slot outside the
        # window: no beat until it is over (seen: 8 requests in a second at a restore).
        self._entering_local = True
        try:
            await local.enter_async_context(self._fallback.slot(priority, deadline))
        finally:
            self._asking = self._entering_local = False

    async def _ask(self, member: str) -> int:
        """One try at a shared slot: 0 (taken as ``member``) or ms until one frees. One ask at
        a time: in a flood every newcomer is the head for a moment (newest first), and Redis
        must not see a thousand concurrent asks (they would exhaust the connection pool)."""
        self._asking = True
        try:
            with self.presence.sending():  # the ask beats (ACQUIRE)
                asking = self._link.guarded(self._acquire, self._keys, [*self._args, member])
                wait_ms = await self._link.call(asking)
        finally:
            self._asking = False
            self._waiters.wake_head()  # a newer head may have queued behind this ask
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py can swallow a cancellation that lands as its answer arrives (seen in
            # a 5,000-waiter cancel at shutdown): honour it, and free a slot taken meanwhile.
            if int(wait_ms) == 0:
                await self._give_back(member)
            raise asyncio.CancelledError
        return int(wait_ms)

    async def _nap(self, seconds: float, deadline: float) -> None:
        """The head waits for a slot: at most :data:`MAX_POLL`, never past its deadline."""
        await self._sleep(max(0.0, min(seconds, MAX_POLL, deadline - self._clock())))

    async def _give_back(self, member: str) -> None:
        if not self._link.ok:
            return  # the lease frees it; the window is Redis', not ours
        try:
            await self._link.call(self._release(keys=[self._key], args=[self._period_us, member]))
        except FAILURES:
            return  # degraded now; the slot frees itself when its lease ends
