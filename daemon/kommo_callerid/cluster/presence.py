"""Which daemons have every request in the shared window now, so the window leaves room for
those that may be working alone.

A daemon that lost Redis, or that Redis cannot hear while the others can (a partition),
works alone at its share, ``rate / expected_nodes``, and those requests are not in the
shared window. Unless the others leave that share free, the account sees more than ``rate``
a second: Kommo answers 429, and repeated 429s block the account. The same happens for a
moment at every outage, because the daemons notice the loss and the return of Redis at
different moments (each probes on its own second).

So each daemon *beats*: with every ask for a slot in the window, and every
:data:`BEAT_INTERVAL` (a busy event loop may be late for that one), it writes its name with
Redis' time into a sorted set while all its requests go through the shared window (the link
is ok, it is not settling, and no local slot is running or still counts in its local
window), and else an older time, which marks it away. A beat promises "for :data:`FRESH`
seconds from now every request of mine is in the window"; a daemon that loses
Redis lets its last promise run out before it starts working alone (:meth:`promised_until`),
and then one period of the window more: slots taken by the others while it still counted as
present hold their place that long.
The window's script (:mod:`.limiter`) keeps ``share`` slots free for every daemon seen within
:data:`REMEMBER` whose beat is not fresh. A daemon that stops cleanly leaves the set, so it
costs nobody its share; one that died is reserved for until :data:`REMEMBER` has passed, as it
may only be cut off and working alone.

A beat that Redis *refused* (full, read-only, a lost epoch: see :mod:`.link`) did not land,
as a refused script writes nothing (the refusal comes at its first write, and the beat's
``ZADD`` is the first that can be refused), so it promises nothing: a daemon whose Redis
refuses writes works alone once its last beat that may have landed has run out.

A Redis that restarted has forgotten the set, and a daemon that has not yet noticed it is
back still works alone. So a daemon that sees Redis come back keeps working alone for
:data:`SETTLE` (it marks itself away at once): by then every daemon that can reach Redis has
noticed too, and has marked itself away or beats.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

from redis.exceptions import ResponseError

from kommo_callerid.cluster.link import FAILURES, PROBE_INTERVAL, SOCKET_TIMEOUT, ClusterLink
from kommo_callerid.cluster.ticker import Ticker

BEAT_INTERVAL = 0.25
#: How long a beat vouches for its daemon (four beats: one lost beat is not an absence).
FRESH = 1.0
#: How long a daemon that stopped beating without leaving keeps its share reserved.
REMEMBER = 600.0
#: After Redis came back, how long a daemon still works alone: every daemon's probe has
#: asked Redis by then.
SETTLE = PROBE_INTERVAL + SOCKET_TIMEOUT
#: How far back an away mark is dated: stale at once, and well within REMEMBER.
AWAY = 2 * FRESH

BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now - tonumber(ARGV[3])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""


class Presence:
    """The beat of one daemon (:meth:`start` / :meth:`stop` own its task)."""

    def __init__(
        self,
        link: ClusterLink,
        all_in_window: Callable[[], bool],
        *,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._link = link
        self._all_in_window = all_in_window
        self._clock = clock
        self.key = link.key("nodes")
        self._beat = link.redis.register_script(BEAT)
        #: The promise of the beats that may have landed, and of those on their way.
        self._promised_until = 0.0
        self._in_flight: list[float] = []
        #: From sending a beat to the end of its promise: the beat may land as late as the
        #: socket timeout, vouches for FRESH, and the others' slots taken meanwhile hold
        #: their place for a period.
        self._promise = SOCKET_TIMEOUT + FRESH + period
        self._ticker = Ticker(self._step, "cluster-presence", sleep)
        self.beats = 0

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """A beat is being sent (here, or with an ask for a slot in the window): it promises
        from now on, unless Redis refuses it. Promised before sending: a beat whose answer is
        lost may still have landed."""
        promise = self._clock() + self._promise
        self._in_flight.append(promise)
        landed = True
        try:
            yield
        except ResponseError:
            landed = False
            raise
        finally:
            self._in_flight.remove(promise)
            if landed:
                self._promised_until = max(self._promised_until, promise)

    def promised_until(self) -> float:
        """Until when (this daemon's clock) the others may count us as in the window: no
        local slot before then."""
        return max([self._promised_until, *self._in_flight])

    def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        """End the beat and leave the set (best effort: a lost Redis forgets us in time)."""
        if not await self._ticker.stop():
            return  # never beat (a one-shot command): the set is the daemons', not ours
        if self._link.ok:
            with contextlib.suppress(*FAILURES):
                await self._link.redis.zrem(self.key, self._link.node)

    async def beat(self) -> None:
        """One beat when every request of ours is in the window, else an away mark."""
        if not self._link.ok:
            return
        present = self._all_in_window()
        dated_back = 0 if present else round(AWAY * 1e6)
        args: list[int | str] = [self._link.node, round(REMEMBER * 1000), dated_back]
        try:
            with self.sending() if present else contextlib.nullcontext():
                await self._link.call(self._beat(keys=[self.key], args=args))
        except FAILURES:
            return  # the link's probe decides whether Redis is lost
        self.beats += present

    async def _step(self) -> float:
        await self.beat()
        return BEAT_INTERVAL
