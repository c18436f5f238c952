"""Cluster wiring: what ``[cluster]`` adds to a daemon, built once Redis has answered.

Kept apart from :mod:`.app` so the lifecycle reads the same with or without a cluster.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kommo_callerid.cluster.claims import Claims
from kommo_callerid.cluster.limiter import SharedRateLimiter
from kommo_callerid.cluster.link import ClusterLink, ClusterStartError
from kommo_callerid.cluster.store import SharedCache, SharedTokens
from kommo_callerid.core.config import Config
from kommo_callerid.core.models import KommoError
from kommo_callerid.daemon.cluster_journal import ClusterJournal
from kommo_callerid.daemon.notifier import TaskOwner
from kommo_callerid.daemon.outcomes import JournalSink
from kommo_callerid.journal.sender import CallLog
from kommo_callerid.kommo.cluster_tokens import publish_token_file
from kommo_callerid.kommo.limits import RateLimiter


@dataclass
class Cluster:
    link: ClusterLink
    limiter: SharedRateLimiter
    claims: Claims
    journal: ClusterJournal

    @classmethod
    async def connect(cls, config: Config) -> Cluster:
        """Reach Redis (``cluster.connected``); raises ``ClusterStartError`` with a sentence."""
        link = ClusterLink(config.cluster)
        try:
            await link.connect()
        except BaseException:
            await link.close()
            raise
        alone = RateLimiter(
            config.kommo.rate_limit / config.cluster.expected_nodes,
            clock=time.monotonic,
            sleep=asyncio.sleep,
        )
        limiter = SharedRateLimiter(
            link, config.kommo.rate_limit, alone, lease=config.kommo.timeout
        )
        claims = Claims(link)
        journal = ClusterJournal(claims, link.node, retain=config.journal.retain)
        return cls(link, limiter, claims, journal)

    def kommo_parts(self) -> dict[str, Any]:
        """The keyword arguments that put a ``KommoClient`` on the cluster."""
        return {
            "limiter": self.limiter,
            "shared_cache": SharedCache(self.link),
            "shared_tokens": SharedTokens(self.link),
        }

    def journal_sink(self, sink: JournalSink, tasks: TaskOwner) -> JournalSink:
        """``sink`` behind the cluster: one daemon journals each call."""
        return self.journal.sink(sink, tasks)

    def journal_calls(self, api: CallLog) -> CallLog:
        """The journal's way to Kommo behind the cluster: only records this daemon owns."""
        return self.journal.calls(api)

    @property
    def health(self) -> str:
        return "ok" if self.link.ok else "degraded"

    async def close(self) -> None:
        await self.journal.close()
        await self.claims.stop()
        await self.limiter.stop()
        await self.link.close()


async def publish_tokens(config: Config) -> None:
    """``authorize`` with ``[cluster]``: put the new pair in Redis for every daemon; raises
    :class:`KommoError` when Redis cannot take it (the pair is in ``token_file`` already)."""
    try:
        cluster = await Cluster.connect(config)
    except ClusterStartError as exc:
        where = config.kommo.token_file
        raise KommoError(None, "redis", f"saved to {where} but not to Redis: {exc}") from None
    try:
        await publish_token_file(config.kommo, SharedTokens(cluster.link))
    finally:
        await cluster.close()


async def cluster_if_reachable(config: Config) -> Cluster | None:
    """For one-shot commands: the cluster when configured and reachable, else None."""
    if not config.cluster.enabled:
        return None
    try:
        return await Cluster.connect(config)
    except ClusterStartError:
        return None
