"""One repeating background step, owned: started once, stopped for good (the claims ticker,
the presence beat)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]


class Ticker:
    """Runs ``step()`` again and again; each step returns the seconds to sleep before the
    next one."""

    def __init__(self, step: Callable[[], Awaitable[float]], name: str, sleep: Sleep) -> None:
        self._step = step
        self._name = name
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.stopped = False

    def start(self) -> None:
        if self._task is None and not self.stopped:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> bool:
        """End it for good; True when it had been started."""
        self.stopped = True
        task, self._task = self._task, None
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def _run(self) -> None:
        # Not ``while True``: a cancel that lands as a timeout expires (in redis-py's socket
        # timeout) can come out as TimeoutError and be swallowed on Python 3.11.
        while not self.stopped:
            await self._sleep(await self._step())
