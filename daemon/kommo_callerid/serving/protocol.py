"""One accepted connection in front of aiohttp's protocol: admitted by the guard at accept,
then (for a TLS listener) its handshake, then aiohttp.

The handshake is done here, per connection (``loop.start_tls``), rather than by the
listening socket, for two reasons:

- the guard counts and deadlines a connection from its accept, so a flood of stalled
  handshakes is bounded like any other waiting connection (a socket given TLS at
  ``create_server`` reaches its protocol only once the handshake is done: until then no cap
  and no per-client count would see it);
- the context is asked for at every accept (``tls()``), so a certificate re-read on SIGHUP
  serves the next connection and established ones keep theirs.

The kernel bounds what user space cannot see: ``TCP_USER_TIMEOUT`` = ``write_timeout`` drops
a peer that acknowledges nothing for that long (a zero window, a vanished client), which also
covers ``sendfile`` (plain HTTP file responses never fill the transport's buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from kommo_callerid.serving.guard import Conn, ConnectionGuard, abort

#: Decrypted bytes kept for aiohttp while ``start_tls`` returns (a client that spoke first).
MAX_EARLY = 64 * 1024

TlsSource = Callable[[], ssl.SSLContext | None]


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol behind the guard: a refused connection never reaches it."""

    def __init__(
        self, guard: ConnectionGuard, inner: asyncio.Protocol, tls: TlsSource | None = None
    ) -> None:
        self._guard = guard
        self._inner = inner
        self._tls = tls
        self._conn: Conn | None = None
        self._attached = False
        #: Decrypted data (and an EOF) that came before ``start_tls`` returned.
        self._early: list[bytes] = []
        self._early_size = 0
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        context = self._tls() if self._tls is not None else None
        self._conn = conn = self._guard.admit(transport, tls=context is not None)
        if conn is None:
            return
        _bound_unacknowledged(transport, self._guard.limits.write_timeout)
        if context is None:
            self._attach(transport)
        else:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()  # the ClientHello waits for start_tls's protocol
            self._guard.handshake(conn, self._handshake(conn, transport, context))

    async def _handshake(
        self, conn: Conn, transport: asyncio.Transport, context: ssl.SSLContext
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                # the guard's deadline closes it first; this is asyncio's own backstop
                ssl_handshake_timeout=self._guard.limits.request_timeout,
            )
        except asyncio.CancelledError:
            self._guard.release(conn)
            transport.abort()
            raise
        except Exception:  # a failed handshake (OSError, SSLError, timeout): no answer owed
            secure = None
        if secure is None or conn.gone:
            # an SSL transport reports no connection_lost for a failed handshake
            self._guard.release(conn)
            transport.abort()
            return
        self._guard.secured(conn, secure)
        self._attach(secure)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._attached = True
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)
        if self._early_eof:
            self._inner.eof_received()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or conn.gone:
            return
        self._guard.received(conn)
        if self._attached:
            self._inner.data_received(data)
            return
        self._early_size += len(data)
        if self._early_size > MAX_EARLY:
            self._guard.release(conn)
            abort(conn.transport)
            return
        self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._conn is None:
            return None
        if not self._attached:
            self._early_eof = True
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard.release(self._conn)
            if self._attached:
                self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._guard.write_paused(self._conn)
            if self._attached:
                self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._guard.write_resumed(self._conn)
            if self._attached:
                self._inner.resume_writing()


def _bound_unacknowledged(transport: asyncio.BaseTransport, seconds: float) -> None:
    """``TCP_USER_TIMEOUT``: the kernel drops a peer that acknowledges nothing for this long
    (Linux applies it to zero-window probes too: a reader that stopped reading)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
