"""One AMI client per supervised session, and the event counters summed across sessions."""

from __future__ import annotations

import asyncio
from dataclasses import fields, replace

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import AmiCounters, ChannelEvent


class AmiSessions:
    """Makes the supervisor's AMI clients, one per session, and sums their counters."""

    def __init__(
        self, config: AmiConfig, queue: asyncio.Queue[ChannelEvent], pbx: str = ""
    ) -> None:
        self._config = config
        self._queue = queue
        self._pbx = pbx
        self._current: AmiClient | None = None
        self._closed = AmiCounters()

    def live_client(self) -> AmiClient | None:
        """This session's client while it is logged in (an Originate goes through it)."""
        client = self._current
        return client if client is not None and client.connected else None

    def new_client(self) -> AmiClient:
        if self._current is not None:
            self._closed = _add(self._closed, self._current.counters)
        self._current = AmiClient(self._config, self._queue, pbx=self._pbx)
        return self._current

    def totals(self) -> AmiCounters:
        if self._current is None:
            return replace(self._closed)
        return _add(self._closed, self._current.counters)


def _add(a: AmiCounters, b: AmiCounters) -> AmiCounters:
    return AmiCounters(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)})
