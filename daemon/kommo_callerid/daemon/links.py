"""The AMI links: one supervised session chain per PBX, all feeding one event queue.

Each PBX has its own :class:`AmiSessions` and :class:`AmiSupervisor` running in its own
task, so a PBX that hangs (logged in, never answering a Ping) or refuses us only ever waits
on its own timers: the others' events keep flowing. Each supervisor task runs with ``pbx``
bound in its logging context, so ``ami.*`` lines say which PBX they are about (not for the
one unnamed ``[ami]``, whose lines stay as they were).

After each login the supervisor lists the channels up; :class:`_Resync` puts them on the queue
(CHANNEL_UP events, then CHANNELS_LISTED) behind the LINK_LOST of the gap, so the outcome
tracker follows the calls that went on across it. Nothing is queued when there was no gap and
no channel is up (a quiet start).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import structlog

from kommo_callerid.ami.originate import AmiOriginator
from kommo_callerid.ami.sessions import AmiSessions
from kommo_callerid.ami.supervisor import AmiSupervisor
from kommo_callerid.core.models import AmiCounters, ChannelEvent, ChannelEventKind
from kommo_callerid.core.pbx_config import PbxConfig
from kommo_callerid.web.stats import PbxLinkStats


@dataclass(slots=True)
class _Link:
    pbx: PbxConfig
    sessions: AmiSessions
    supervisor: AmiSupervisor


class PbxLinks:
    def __init__(
        self,
        pbxs: Iterable[PbxConfig],
        queue: asyncio.Queue[ChannelEvent],
        *,
        on_state: Callable[[bool], None],
        clock: Callable[[], float],
    ) -> None:
        self._links = [self._link(pbx, queue, on_state, clock) for pbx in pbxs]

    @staticmethod
    def _link(
        pbx: PbxConfig,
        queue: asyncio.Queue[ChannelEvent],
        on_state: Callable[[bool], None],
        clock: Callable[[], float],
    ) -> _Link:
        sessions = AmiSessions(pbx.ami, queue, pbx.name)
        resync = _Resync(queue, clock, pbx.name)
        supervisor = AmiSupervisor(
            pbx.ami,
            sessions.new_client,
            on_state=on_state,
            on_link_lost=resync.link_lost,
            on_channels=resync.channels,
        )
        return _Link(pbx, sessions, supervisor)

    @property
    def named(self) -> bool:
        """True with ``[ami.NAME]`` tables; False for the one unnamed ``[ami]``."""
        return any(link.pbx.name for link in self._links)

    @property
    def connected(self) -> bool:
        """Every PBX logged in."""
        return all(link.supervisor.connected for link in self._links)

    @property
    def reconnects(self) -> int:
        return sum(link.supervisor.reconnects for link in self._links)

    def states(self) -> dict[str, str]:
        """PBX name -> ``connected`` or ``disconnected`` (``/healthz`` ``pbx``)."""
        return {
            link.pbx.name: "connected" if link.supervisor.connected else "disconnected"
            for link in self._links
        }

    def totals(self) -> AmiCounters:
        """Event counters summed over every PBX and session."""
        total = AmiCounters()
        for link in self._links:
            counts = link.sessions.totals()
            for f in fields(total):
                setattr(total, f.name, getattr(total, f.name) + getattr(counts, f.name))
        return total

    def stats(self) -> tuple[PbxLinkStats, ...]:
        return tuple(
            PbxLinkStats(
                link.pbx.name,
                link.supervisor.connected,
                link.supervisor.reconnects,
                link.sessions.totals(),
            )
            for link in self._links
        )

    def where(self) -> str:
        """``host:port``, or ``north=host:port, south=host:port`` (the ``daemon.started`` line)."""
        addresses = [
            (link.pbx.name, f"{link.pbx.ami.host}:{link.pbx.ami.port}") for link in self._links
        ]
        if not self.named:
            return addresses[0][1]
        return ", ".join(f"{name}={address}" for name, address in addresses)

    def originator(self) -> AmiOriginator:
        """Click-to-call's Originate port: each PBX's live session, whichever it is now."""
        return AmiOriginator({link.pbx.name: link.sessions.live_client for link in self._links})

    def start(self) -> list[asyncio.Task[None]]:
        """One supervisor task per PBX; the daemon owns (and cancels) them."""
        return [self._start(link) for link in self._links]

    @staticmethod
    def _start(link: _Link) -> asyncio.Task[None]:
        name = link.pbx.name
        context = contextvars.copy_context()
        if name:
            context.run(structlog.contextvars.bind_contextvars, pbx=name)
        task_name = f"ami-supervisor-{name}" if name else "ami-supervisor"
        return asyncio.create_task(link.supervisor.run(), name=task_name, context=context)


class _Resync:
    """One PBX's gaps, as markers on the event queue (``await put``: never dropped)."""

    def __init__(
        self, queue: asyncio.Queue[ChannelEvent], clock: Callable[[], float], pbx: str
    ) -> None:
        self._queue = queue
        self._clock = clock
        self._pbx = pbx
        #: A LINK_LOST was queued and no channel list (or the word that none comes) since.
        self._gap = False

    async def link_lost(self) -> None:
        """State from before the gap is not trusted until the next list says what is left."""
        self._gap = True
        await self._queue.put(ChannelEvent.link_lost(self._clock(), self._pbx))

    async def channels(self, listed: list[ChannelEvent] | None) -> None:
        if listed is None:
            if self._gap:
                unknown = ChannelEventKind.CHANNELS_UNKNOWN
                await self._queue.put(ChannelEvent.marker(unknown, self._clock(), self._pbx))
                self._gap = False
            return
        if not listed and not self._gap:
            return
        for event in listed:
            await self._queue.put(event)
        done = ChannelEventKind.CHANNELS_LISTED
        await self._queue.put(ChannelEvent.marker(done, self._clock(), self._pbx))
        self._gap = False
