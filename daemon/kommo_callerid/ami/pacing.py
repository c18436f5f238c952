"""Backpressure from the intake to the AMI reader, bounded in time.

The reader puts each event on the intake's queue; a full queue sheds events (counted as
``dropped``). A reader faster than the intake (a ``read=all`` burst, a faster event loop)
would shed events of a backlog the intake would have caught up with a moment later, and a
shed Hangup or Newchannel leaves a call half known. So when the queue is half full the reader
stalls: it stops parsing and reading (the kernel's socket buffers and Asterisk hold what
comes meanwhile) until the intake has taken from the queue. The intake takes whole batches
each loop turn, so a stall usually lasts one turn, and the reader keeps pace with the intake.

Never for long: Asterisk drops an AMI client that does not read for its ``writetimeout``
(100 ms by default) once the socket buffers are full, and losing the link loses more than a
shed event. When the intake has taken nothing for :data:`MAX_STALL` seconds (it is stuck,
or starved by other work) the reader reads on, and a full queue sheds and counts as before
(issue 13's flood design: the link stays up, ``ami.events_dropped`` counts). It does not
stall again until the queue is below half full: a stuck intake's flood is read at full
speed and shed, not read a stall at a time. (A call flood the intake keeps up with is shed
where it is understood: the notifier's cap on waiting calls.)

A stall is checked once a loop turn, so it may outlast MAX_STALL by the turn in progress; the
reader would not have read during that turn either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kommo_callerid.ami.protocol import Flow

__all__ = ["MAX_STALL", "ReadPacer"]

#: Seconds a stall may last without the intake taking an event (half of Asterisk's default
#: ``writetimeout``).
MAX_STALL = 0.05


class ReadPacer:
    """Tells the reader, after each event queued, whether to stall; ends the stall.

    ``unstall`` resumes the reader. The queue is looked at once per loop turn while stalled:
    the intake takes a batch per turn, so each check sees the last batch taken.
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
        #: Stall at this many events waiting. An unbounded queue never sheds: no stall.
        self.stall_at = size // 2 if size > 0 else 1 << 62
        self.stalls = 0  # stalls begun
        self.overruns = 0  # stalls ended by MAX_STALL: the intake took nothing meanwhile
        #: A stall overran and the queue has not been below ``stall_at`` since: read on.
        self.flooding = False
        self._level = 0  # events waiting when the stall began
        self._since = 0.0
        self._check: asyncio.Handle | None = None

    def after_queued(self, waiting: int) -> Flow:
        """``waiting`` events are queued now. The client calls this only when ``waiting``
        is at least :attr:`stall_at` or :attr:`flooding` is set (the hot path)."""
        if self.flooding:
            if waiting < self.stall_at:
                self.flooding = False
            return Flow.GO
        if waiting < self.stall_at or self._check is not None:
            return Flow.GO
        loop = asyncio.get_running_loop()
        self.stalls += 1
        self._level, self._since = waiting, loop.time()
        self._check = loop.call_soon(self._poll)
        return Flow.STALL

    def close(self) -> None:
        """The session ends: no check is left on the loop."""
        if self._check is not None:
            self._check.cancel()
            self._check = None

    def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        if self._waiting() < self._level:  # the intake took a batch: read again
            self._check = None
        elif loop.time() - self._since >= self._max_stall:
            self._check = None
            self.overruns += 1
            self.flooding = True
        else:
            self._check = loop.call_soon(self._poll)
            return
        self._unstall()  # may stall again at once (a new check)
