"""Bounds for a listener that faces the internet: connections, clients, slow clients.

aiohttp bounds a request's size (``client_max_size``, header line and field sizes) but not
how many connections it holds or how long a client may take to send its request head: a
slowloris (thousands of connections trickling a header each) would hold a socket, a TLS
session and a handler each, for ever. :class:`ConnectionGuard` sits between the TCP
listener and aiohttp's handler:

- it counts connections at accept, before any TLS work: over ``max_connections`` in all or
  ``max_per_client`` from one address, the socket is aborted at once (no handshake, no
  buffer);
- it does the TLS handshake itself (``loop.start_tls``) with the *current* context, so a
  certificate re-read on SIGHUP serves the next connection;
- the handshake plus the first request head must arrive within ``head_timeout`` of the
  accept; after that aiohttp's ``keepalive_timeout`` closes idle connections, and
  ``max_age`` ends any connection (a request waiting for a PBX is shorter).

Kept minimal and local to ``public/``: a shared helper for every aiohttp listener (per
listener and per client caps, header read timeout) can replace :class:`ConnectionGuard`
and :class:`Bounds` here, with :meth:`ConnectionGuard.protocol` as the seam.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_HEAD_END = b"\r\n\r\n"
#: Bytes kept for the handler while the TLS upgrade returns (a request head and a small body).
_MAX_EARLY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Bounds:
    max_connections: int = 256
    #: An office behind one NAT address shares this (a browser opens about 6 per site).
    max_per_client: int = 64
    #: Seconds from accept to a complete first request head (TLS handshake included).
    head_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 15.0
    #: Seconds any connection may live.
    max_age: float = 120.0
    #: Bytes of a request body (a click is ``{"phone": "..."}``).
    max_body: int = 4096
    #: Seconds to read a request body.
    body_timeout: float = 10.0


class ConnectionGuard:
    """Makes the listener's protocols; counts what is open (``open``, ``refused``)."""

    def __init__(
        self,
        bounds: Bounds,
        handler_factory: Callable[[], asyncio.Protocol],
        tls: Callable[[], ssl.SSLContext | None],
    ) -> None:
        self.bounds = bounds
        self._handler_factory = handler_factory
        self._tls = tls
        self._per_client: Counter[str] = Counter()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._open: set[_Guarded] = set()
        self.refused = 0
        self.timed_out = 0

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        return _Guarded(self)

    async def close(self) -> None:
        """Abort every connection and handshake (the listener is already closed)."""
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        for guarded in list(self._open):
            guarded.abort()

    def _admit(self, guarded: _Guarded) -> bool:
        client = guarded.client
        bounds = self.bounds
        if len(self._open) >= bounds.max_connections or (
            self._per_client[client] >= bounds.max_per_client
        ):
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning("public.connections_refused", refused=self.refused, client=client)
            return False
        self._open.add(guarded)
        self._per_client[client] += 1
        return True

    def _release(self, guarded: _Guarded) -> None:
        if guarded in self._open:
            self._open.discard(guarded)
            self._per_client[guarded.client] -= 1
            if self._per_client[guarded.client] <= 0:
                del self._per_client[guarded.client]


class _Guarded(asyncio.Protocol):
    """One connection: admitted or aborted at accept, then TLS, then aiohttp's handler."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._loop = asyncio.get_running_loop()
        self._raw: asyncio.Transport | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._handler: asyncio.Protocol | None = None
        self._head_seen = False
        self._tail = b""
        #: Decrypted bytes that came before ``start_tls`` returned (the client spoke first).
        self._early: list[bytes] = []
        self._early_eof = False
        self._timers: list[asyncio.TimerHandle] = []
        self.client = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "?"
        guard = self._guard
        if not guard._admit(self):
            transport.abort()
            return
        bounds = guard.bounds
        self._timers = [
            self._loop.call_later(bounds.head_timeout, self._too_slow),
            self._loop.call_later(bounds.max_age, self.abort),
        ]
        context = guard._tls()
        if context is None:
            self._attach(transport)
            return
        transport.pause_reading()  # the ClientHello waits for the TLS protocol (start_tls resumes)
        task = self._loop.create_task(self._handshake(transport, context))
        guard._handshakes.add(task)
        task.add_done_callback(guard._handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            tls = await self._loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._guard.bounds.head_timeout,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError):
            self.abort()
            self._closed()
            return
        except asyncio.CancelledError:
            self.abort()
            self._closed()
            raise
        if tls is None:
            self.abort()
            self._closed()
            return
        self._attach(tls)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._handler = handler = self._guard._handler_factory()
        handler.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            handler.data_received(data)
        if self._early_eof:
            handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            window = self._tail + data
            if _HEAD_END in window:
                self._head_seen = True
                self._timers[0].cancel()
            self._tail = window[-3:]
        if self._handler is not None:
            self._handler.data_received(data)
        elif sum(map(len, self._early)) + len(data) > _MAX_EARLY:
            self.abort()
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._handler is None:
            self._early_eof = True
            return True
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        if self._handler is not None:
            handler, self._handler = self._handler, None
            handler.connection_lost(exc)

    def abort(self) -> None:
        for transport in (self._transport, self._raw):
            if transport is not None and not transport.is_closing():
                _abort(transport)

    def _too_slow(self) -> None:
        if not self._head_seen:
            self._guard.timed_out += 1
            self.abort()

    def _closed(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._guard._release(self)


def _abort(transport: Any) -> None:
    transport.abort()
