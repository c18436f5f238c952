"""The journal's clock for ages and retries: Unix time that moves with the monotonic clock.

Why: ``retain`` and the retry backoff are durations, and a step of the wall clock (NTP
correcting a box that booted days behind, an operator's ``date -s``) is not time that passed.
With the wall clock, +2 days expired every pending record at once and -1 day stalled them all
for a day (issue 18). This clock reads the wall clock once, when the daemon starts, and then
only adds monotonic seconds; what it writes (a record's ``recorded_at`` and ``next_try``) is
still Unix time, so records written before a restart keep their meaning after it.

Timestamps that Kommo shows (a call's ``created_at``) are not taken from here: they are the wall
clock of the moment (see :meth:`kommo_callerid.daemon.app.Daemon._wall_time`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """``clock()``: the wall time at construction plus the monotonic seconds since."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()
