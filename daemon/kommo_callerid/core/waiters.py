"""The queue in front of a rate limiter, shared by the local one (``kommo.limits``) and the
cluster's (``cluster.limiter``), which differ only in how the head learns a slot is free.

Waiters are served by priority (lower first). Within one, first come first served while the
backlog is at most ``lifo_above`` waiters; beyond that, newest first: in a flood the oldest
are the least likely to still be useful, and a new call must not wait behind a thousand. A
waiter whose deadline passes leaves at once, without using a slot (:class:`SlotExpired`).
Only the head waiter is ever woken; leaving is O(1) (dead heap entries are skipped, and the
heaps compacted when half dead), so cancelling N waiters is O(N log N), never N².
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass


class SlotExpired(Exception):
    """The request's deadline passed while it waited: it left the queue without a slot."""


@dataclass(eq=False, slots=True)
class Waiter:
    deadline: float
    woken: asyncio.Future[None] | None = None
    gone: bool = False  # served, cancelled or expired: its heap entries are dead
    expired: bool = False


class WaitQueue:
    """Waiters by (priority, order), and by deadline; ``clock`` is the deadlines' clock."""

    def __init__(self, lifo_above: int, clock: Callable[[], float]) -> None:
        self._lifo_above = max(1, lifo_above)
        self._clock = clock
        self._queue: list[tuple[int, int, Waiter]] = []  # (priority, order, waiter)
        self._deadlines: list[tuple[float, int, Waiter]] = []  # soonest first
        self._order = itertools.count(1)
        self._dead = 0
        #: Waiters in the queue now.
        self.live = 0
        #: Waiters that gave up because their deadline passed (they never took a slot).
        self.expired = 0

    def enqueue(self, priority: int, deadline: float = math.inf) -> Waiter:
        waiter = Waiter(deadline)
        order = next(self._order)
        if self.live >= self._lifo_above:
            order = -order  # a backlog: the newest goes first
        heapq.heappush(self._queue, (int(priority), order, waiter))
        if deadline < math.inf:
            heapq.heappush(self._deadlines, (deadline, order, waiter))
        self.live += 1
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` is out (served, cancelled or expired): O(1), then the head is woken."""
        if waiter.gone:
            return
        waiter.gone = True
        self.live -= 1
        self._dead += 1
        if self._dead > 64 and self._dead > self.live:
            self._compact()
        self.wake_head()

    def expire(self) -> None:
        """Every waiter whose deadline has passed leaves now, and is told."""
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            waiter = heapq.heappop(self._deadlines)[2]
            if waiter.gone:
                continue
            waiter.expired = True
            self.expired += 1
            self.leave(waiter)
            _wake(waiter)

    def check(self, waiter: Waiter) -> None:
        """Raise :class:`SlotExpired` when ``waiter`` has expired (after :meth:`expire`)."""
        self.expire()
        if waiter.expired:
            raise SlotExpired

    def head(self) -> Waiter | None:
        queue = self._queue
        while queue and queue[0][2].gone:
            heapq.heappop(queue)
        return queue[0][2] if queue else None

    def wake_head(self) -> None:
        head = self.head()
        if head is not None:
            _wake(head)

    async def sleep_until_woken(self, waiter: Waiter) -> None:
        """Until ``waiter`` is woken: it became the head, a slot freed, or it expired."""
        waiter.woken = asyncio.get_running_loop().create_future()
        await waiter.woken

    def _compact(self) -> None:
        self._queue = [entry for entry in self._queue if not entry[2].gone]
        heapq.heapify(self._queue)
        self._deadlines = [entry for entry in self._deadlines if not entry[2].gone]
        heapq.heapify(self._deadlines)
        self._dead = 0


def _wake(waiter: Waiter) -> None:
    if waiter.woken is not None and not waiter.woken.done():
        waiter.woken.set_result(None)
