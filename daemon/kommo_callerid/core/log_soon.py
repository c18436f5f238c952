"""Log lines that wait for the loop's next turn, so a hot path finishes its work first.

Building a JSON log line costs tens of microseconds (the processor chain, the renderer, the
write). On a call's path to its notification that is most of the budget: the notification
request is written first, the line a loop turn later. ``call_soon`` runs callbacks in order and
copies the caller's context, so the line keeps its order among deferred lines and the call's
bound fields (``call_id``, ``caller``). Without a running loop the line is written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol


class InfoLogger(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...


def info_soon(logger: InfoLogger, event: str, **fields: Any) -> None:
    """``logger.info(event, **fields)`` on the next loop turn (at once with no loop running)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.info(event, **fields)
        return
    loop.call_soon(partial(logger.info, event, **fields))


def soon(callback: Callable[..., object], *args: Any) -> None:
    """``callback(*args)`` on the next loop turn (at once with no loop running): a line whose
    fields are gathered there too, so the hot path pays one ``call_soon`` for it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback(*args)
        return
    loop.call_soon(callback, *args)
