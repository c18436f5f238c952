"""Several call notifications in one ``POST /api/v2/events`` while they wait for the rate limit.

The first notification to find no open batch leads one: it sends the request at once, so a
lone notification is never delayed. Those that come while the leader waits for a slot of
the rate limit join its batch, up to :data:`MAX_ITEMS`; the batch is sealed when the slot
is granted (the transport asks for the payload then), and items whose deadline has passed
leave it without being sent. A batch that never went out (its leader's deadline passed, or
the leader was cancelled) sends its followers back to lead or join another one.

Kommo's documentation gives no item limit for ``add``; 50 keeps a body small (~5 kB) and a
rejected batch cheap, and at 7 requests/s still carries 350 notifications a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kommo_callerid.core.models import DeadlineReached
from kommo_callerid.kommo.limits import Priority
from kommo_callerid.kommo.parse import Response
from kommo_callerid.kommo.transport import KommoTransport

EVENTS_PATH = "/api/v2/events"
MAX_ITEMS = 50


class _NotSent(Exception):
    """The batch never went out: try again in another one."""


class _Item:
    """One notification in a batch; ``answer``: a follower's, None for the leader (it has
    the transport's answer itself; this runs on every call's path, a future does not)."""

    __slots__ = ("answer", "deadline", "event")

    def __init__(self, event: dict[str, Any], deadline: float, *, follower: bool) -> None:
        self.event = event
        self.deadline = deadline
        self.answer: asyncio.Future[tuple[Response, int]] | None = (
            asyncio.get_running_loop().create_future() if follower else None
        )


class _Batch:
    __slots__ = ("clock", "items", "sealed")

    def __init__(self, clock: Callable[[], float], first: _Item) -> None:
        self.clock = clock
        self.items = [first]
        self.sealed: list[_Item] | None = None

    def payload(self) -> dict[str, Any]:
        """Called by the transport once the rate limit let the request go (every attempt)."""
        if self.sealed is None:
            now = self.clock()
            self.sealed = [item for item in self.items if item.deadline > now]
            for item in self.items:
                if item.deadline <= now:
                    _settle(item, exception=_expired())
        return {"add": [item.event for item in self.sealed]}


class EventBatcher:
    def __init__(
        self, http: KommoTransport, clock: Callable[[], float], max_items: int | None = None
    ) -> None:
        self._http = http
        self._clock = clock
        # read at start: the benchmark sets MAX_ITEMS = 1 to measure life without batches
        self._max = max_items or MAX_ITEMS
        self._open: _Batch | None = None
        self.requests = 0

    @property
    def gathering(self) -> bool:
        """A batch is open: its leader waits for the rate limit, and others may join it."""
        return self._open is not None and self._open.sealed is None

    async def send(self, event: dict[str, Any], deadline: float) -> tuple[Response, int]:
        """Kommo's answer to the request that carried ``event``, and how many it carried;
        raises like :meth:`KommoTransport.request`."""
        while True:
            batch = self._open
            if batch is None or batch.sealed is not None or len(batch.items) >= self._max:
                return await self._lead(event, deadline)
            item = _Item(event, deadline, follower=True)
            assert item.answer is not None
            batch.items.append(item)
            try:
                return await asyncio.shield(item.answer)
            except _NotSent:
                continue
            except asyncio.CancelledError:
                if batch.sealed is None:
                    batch.items.remove(item)
                raise

    async def _lead(self, event: dict[str, Any], deadline: float) -> tuple[Response, int]:
        own = _Item(event, deadline, follower=False)
        batch = _Batch(self._clock, own)
        self._open = batch
        try:
            response = await self._http.request(
                "POST",
                EVENTS_PATH,
                payload=batch.payload,
                priority=Priority.NOTIFY,
                deadline=deadline,
            )
        except BaseException as exc:
            self._close(batch)
            for item in batch.items:
                if item is not own:
                    went_out = batch.sealed is not None and item in batch.sealed
                    failure = exc if went_out and isinstance(exc, Exception) else _NotSent()
                    _settle(item, exception=failure)
            raise
        self._close(batch)
        size = len(batch.sealed or ())
        self.requests += 1
        for item in batch.sealed or ():
            if item is not own:
                _settle(item, result=(response, size))
        return response, size

    def _close(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None


def _settle(
    item: _Item,
    *,
    result: tuple[Response, int] | None = None,
    exception: BaseException | None = None,
) -> None:
    answer = item.answer
    if answer is None or answer.done():  # the leader hears from the transport itself
        return
    if exception is not None:
        answer.set_exception(exception)
        answer.exception()  # retrieved: a follower that gave up leaves no warning
    else:
        assert result is not None
        answer.set_result(result)


def _expired() -> DeadlineReached:
    return DeadlineReached(None, EVENTS_PATH, "the call's notify_ttl had passed", 0)
