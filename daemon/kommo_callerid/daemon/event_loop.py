"""The event loop the daemon process runs on: uvloop when it is installed, else asyncio's own.

uvloop (the ``fast`` extra; Debian's ``python3-uvloop``) runs the same code with its
transports and loop in C: on issue 22's benchmark the daemon read a ``read=all`` AMI stream
about twice as fast (ingest 2.5-4.0x a bare panoramisk reader on asyncio's loop, 6.7-7.2x on
uvloop). It is optional: without it, or if it cannot be imported, the daemon runs on asyncio's
loop exactly as before; nothing is configured. Tests keep pytest's own loop.

Not installed by the .deb nor the tests. On uvloop the reader outran the intake in a
``read=all`` flood: without backpressure events were shed (115 of 321 inbound calls notified
in the ingest benchmark). The AMI reader now stalls while the intake is behind
(:mod:`kommo_callerid.ami.pacing`): on uvloop every call is notified (2,001 of 2,001, full
ingest run), at about the rate of asyncio's loop, as the intake is then the bottleneck; CPU
per call 3.3 -> 3.0 ms, too little for one more compiled dependency in the .deb.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` when uvloop imports, else None (asyncio's default loop)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available (``uvloop.run`` is 0.18+; Debian 12
    ships 0.17, hence the runner with a loop factory)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
