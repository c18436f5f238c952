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
from kommo_callerid.cluster.link import ClusterLink
from kommo_callerid.cluster.store import SharedCache, SharedTokens
from kommo_callerid.core.config import Config
from kommo_callerid.kommo.limits import RateLimiter


@dataclass
class Cluster:
    link: ClusterLink
    limiter: SharedRateLimiter
    claims: Claims

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
        return cls(link, limiter, Claims(link))

    def kommo_parts(self) -> dict[str, Any]:
        """The keyword arguments that put a ``KommoClient`` on the cluster."""
        return {
            "limiter": self.limiter,
            "shared_cache": SharedCache(self.link),
            "shared_tokens": SharedTokens(self.link),
        }

    @property
    def health(self) -> str:
        return "ok" if self.link.ok else "degraded"

    async def close(self) -> None:
        await self.link.close()
