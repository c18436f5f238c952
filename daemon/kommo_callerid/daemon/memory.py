"""The daemon process's memory: a cheap garbage collector, and a flood's memory given back.

At start (:func:`freeze_startup_heap`, called by the CLI once imports and configuration are
done) the objects that live as long as the process are moved out of the collector's sight
(``gc.freeze``): every full collection would walk them again, and in a 100,000-call flood
the collector's passes over them were some 10 of 22 CPU seconds of the intake.

Giving a flood's memory back. After a burst of calls is shed, its objects are freed, but
the memory stays with the process: CPython keeps emptied arenas' neighbours and glibc keeps
freed heap pages, so RSS would stay at the flood's peak for the life of the process. For a
while after a flood this collects garbage and asks glibc (``malloc_trim``, via ctypes; absent
elsewhere, then only the collection) to return free pages to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

#: Seconds between two releases while a flood is recent.
RELEASE_EVERY = 10.0
#: The collector's thresholds: a young collection every 10,000 allocations instead of 700.
GC_THRESHOLDS = (10_000, 10, 10)
#: For how long after a flood's last flooded batch memory is released (its calls' requests
#: expire within notify_ttl, 45 s by default).
RELEASE_FOR = 90.0


def freeze_startup_heap() -> None:
    """Once per process, before the daemon starts: what exists now is never garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def release_memory() -> bool:
    """Collect garbage and trim the C heap; True when glibc's ``malloc_trim`` returned pages."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


async def release_after_floods(last_flood: Callable[[], float | None]) -> None:
    """Run forever: release memory every RELEASE_EVERY s for RELEASE_FOR s after a flood
    (``last_flood``: the loop time of its last flooded batch, or None)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(RELEASE_EVERY)
        flooded_at = last_flood()
        if flooded_at is not None and loop.time() - flooded_at <= RELEASE_FOR:
            release_memory()
