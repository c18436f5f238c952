"""Backpressure from the intake to the AMI reader, bounded in time.

The reader puts each event on the intake's queue; a full queue sheds events (counted as
``dropped``). A reader faster than the intake (a ``read=all`` burst, a faster event loop)
would shed events of a backlog the intake would have caught up with a moment later. So when
the queue is half full the reader stalls: it stops parsing and reading (the kernel's socket
buffers and Asterisk's own queue hold what comes meanwhile) and resumes once the intake has
taken the queue down to a quarter.

Never for long: Asterisk drops an AMI client that does not read for its ``writetimeout``
(100 ms by default) once the socket buffers are full, and losing the link loses more than a
shed event. A stall lasts at most :data:`MAX_STALL` seconds of loop time; past it the
reader reads on and a full queue sheds and counts as before (issue 13's flood design: a
true flood is shed, the link stays up). It does not stall again before the queue has
drained to a quarter: a sustained flood is read at full speed, not a stall at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kommo_callerid.ami.protocol import Flow

__all__ = ["MAX_STALL", "ReadPacer"]

#: Seconds a stall may last at most (half of Asterisk's default ``writetimeout``).
MAX_STALL = 0.05


class ReadPacer:
    """Tells the reader, after each event queued, whether to stall; ends the stall.

    ``unstall`` resumes the reader. The drain is checked once per loop turn while stalled:
    the intake takes a batch per turn, so a check sees each batch taken.
    """

    def __init__(
        self,
        size: int,
        waiting: Callable[[], int],
        unstall: Callable[[], None],
        *,
        max_stall: float | None = None,
    ) -> None:
        """``size``: the queue's maxsize (0: unbounded); ``waiting``: its qsize."""
        self._waiting = waiting
        self._unstall = unstall
        self._max_stall = MAX_STALL if max_stall is None else max_stall
        #: Stall at this many events waiting; resume below ``resume_below``. An unbounded
        #: queue never sheds, so it never stalls.
        self.stall_at = size // 2 if size > 0 else 1 << 62
        self.resume_below = size // 4
        self.stalls = 0  # stalls begun
        self.overruns = 0  # stalls that lasted MAX_STALL: the reader read on
        self._flooding = False  # a stall overran and the queue has not drained since
        self._since = 0.0
        self._check: asyncio.Handle | None = None

    @property
    def stalled(self) -> bool:
        return self._check is not None

    def after_queued(self, waiting: int) -> Flow:
        """Called when ``waiting >= stall_at`` or after an overrun (see :attr:`watching`)."""
        if self._flooding:
            if waiting < self.resume_below:
                self._flooding = False
            return Flow.GO
        if waiting < self.stall_at or self._check is not None:
            return Flow.GO
        loop = asyncio.get_running_loop()
        self.stalls += 1
        self._since = loop.time()
        self._check = loop.call_soon(self._poll)
        return Flow.STALL

    @property
    def watching(self) -> bool:
        """True while each event must be reported (after an overrun, until the drain)."""
        return self._flooding

    def close(self) -> None:
        """The session ends: no check is left on the loop."""
        if self._check is not None:
            self._check.cancel()
            self._check = None

    def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        if self._waiting() < self.resume_below:
            self._check = None
        elif loop.time() - self._since >= self._max_stall:
            self._check = None
            self.overruns += 1
            self._flooding = True
        else:
            self._check = loop.call_soon(self._poll)
            return
        self._unstall()
