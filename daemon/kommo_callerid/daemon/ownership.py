"""Which daemon of a cluster notifies a call: claim it, hold the claim while working, finish.

The claim itself is :mod:`kommo_callerid.cluster.claims`; this module is the notifier's side
of it: a call is notified only once its claim is won, the claim is held (the cluster's
ticker renews every held claim at once) until the call needs nothing more (ended or past
``notify_ttl``, nothing in flight), then marked done. A stop or a crash before that releases
it (or lets it lapse), so a daemon watching the same PBX takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

#: The claim's purpose for call notifications (the journal claims with "journal").
NOTIFY = "notify"


class ClaimPort(Protocol):
    """What the notifier needs of ``cluster.claims.Claim``."""

    async def finish(self) -> None: ...
    async def release(self) -> None: ...
    async def record(self, users: tuple[int, ...] | None) -> None: ...
    async def recorded(self) -> tuple[frozenset[int], bool]: ...


class ClaimsPort(Protocol):
    """What the notifier needs of ``cluster.claims.Claims``."""

    ttl: float

    async def wait_claim(
        self, call_id: str, purpose: str, *, until: Callable[[], bool]
    ) -> ClaimPort | None: ...


async def hold(
    claim: ClaimPort, done: Callable[[], bool], every: float, stop: asyncio.Event
) -> None:
    """Hold ``claim`` (looking every ``every`` seconds) until ``done()``; then mark it done.
    Released instead when ``stop`` is set or the task is cancelled (the daemon stops), so
    another daemon can take the call over at once."""
    finished = False
    try:
        while not done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
        await claim.finish()
        finished = True
    finally:
        if not finished:  # not shielded: a release must not outlive the daemon's link
            await claim.release()
