"""One request for many callers who want the same thing at once (a number looked up while
another call from it is being looked up).

The first caller leads: it runs the request in its own task, inline, so its answer reaches
it without a hop through another task (a cold call's notification is written in the loop turn
the lookup's answer arrives in). Callers who come meanwhile follow: they wait for the
leader's answer, or its error. A leader that gives up (its call shed in a flood) takes its
request with it; its followers then lead or follow again, so nobody waits for a request
nobody runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LeaderGone(Exception):
    """The leader gave up before an answer: lead or follow again."""


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, tuple[asyncio.Future[V], asyncio.Task[object] | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, request: Callable[[], Awaitable[V]]) -> V:
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, request)
            try:
                # shield: a follower that gives up must not cancel the leader's answer
                return await asyncio.shield(flight[0])
            except _LeaderGone:
                continue

    async def _lead(self, key: K, request: Callable[[], Awaitable[V]]) -> V:
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._flights[key] = (answer, asyncio.current_task())
        try:
            result = await request()
        except BaseException as exc:
            gone = isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception)
            answer.set_exception(_LeaderGone() if gone else exc)
            answer.exception()  # retrieved: an error nobody follows is no warning
            raise
        finally:
            if self._flights.get(key, (None,))[0] is answer:
                del self._flights[key]
        answer.set_result(result)
        return result

    def cancel_all(self) -> list[asyncio.Task[object]]:
        """Cancel every leader (a closing client); their tasks, to await."""
        leaders = [task for _, task in self._flights.values() if task is not None]
        for task in leaders:
            task.cancel()
        return leaders
