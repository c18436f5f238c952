"""Calls on their way to a notification, counted, so that background work lets them pass.

Why (issue 22): the journal's bookkeeping after Kommo's answer (a batch's states, its log
lines, the trip to the database thread) holds the loop about a millisecond. A call whose
lookup answer came in meanwhile waited behind it: 35 of the 40 slowest of 2,000 cold
notifications in the latency benchmark, of the 82 that met it at all. The journal is not in
a hurry; a ringing phone is. So the notifier marks the stretch from a call's lookup to its
notification, and the journal waits for a quiet moment (never long: a call centre is never
quiet for long, and a record must still reach Kommo).
"""

from __future__ import annotations

import asyncio
import contextlib

#: The longest a background step waits for the calls in flight (seconds): under a steady
#: stream of calls each waits about a millisecond; a flood must not stop the journal.
QUIET_WAIT = 0.05


class HotPath:
    """How many calls are between their lookup and their notification."""

    def __init__(self, longest_wait: float = QUIET_WAIT) -> None:
        self._longest_wait = longest_wait
        self._calls = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def busy(self) -> bool:
        return self._calls > 0

    def call(self) -> HotPath:
        """``with hot_path.call():`` around a call's way to its notification (the stretch
        the journal lets pass). The path itself is the manager: a generator-based one cost
        several times as much, on every call's path."""
        return self

    def __enter__(self) -> None:
        self._calls += 1
        self._quiet.clear()

    def __exit__(self, *exc_info: object) -> None:
        self._calls -= 1
        if not self._calls:
            self._quiet.set()

    async def quiet(self) -> None:
        """Return when no call is in flight, or after ``longest_wait`` seconds; always gives
        the loop a turn first (what arrived meanwhile is read before the caller goes on)."""
        await asyncio.sleep(0)
        if not self._calls:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), self._longest_wait)
