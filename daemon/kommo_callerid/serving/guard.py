"""The connection table of a bounded aiohttp listener: at most so many connections (in all,
and per client address), a deadline for each request to arrive whole, one for an idle
keep-alive connection, and one for a response its reader stopped taking.

Why: aiohttp alone keeps every connection a client opens and waits for a request head as long
as the client likes, so 1,100 idle sockets ran the daemon out of descriptors and 300
slowloris connections were never reaped. Every accepted socket passes through
:class:`~.protocol.GuardedProtocol` (a thin asyncio protocol in front of aiohttp's own, which
also does the TLS handshake) and the app's first middleware, which together know each
connection's state:

- *waiting*: accepted (TLS handshake included) or done with a response, no request being
  handled. A deadline runs: ``request_timeout`` from the accept, ``idle_timeout`` after a
  response; handshake, head and body of the next request must all be in by then (the
  middleware reads the body before the handler runs), or the connection is closed.
- *busy*: a handler runs or its response is being written; never evicted, no request
  deadline (handlers bound themselves). Only a response that makes no progress for
  ``write_timeout`` (the reader stopped reading, or is gone) ends it: see
  :meth:`ConnectionGuard.write_paused`.

There is no maximum connection age: every state above has its own bound, and an age limit
would only add one for a busy connection, cutting a long recording download on a slow link.

At ``max_connections`` (or a client's ``max_per_client``) a new connection takes the place of
the longest-waiting one; when every connection is busy it is refused (a bare 503 in plain
HTTP, a close under TLS). So a flood of idle sockets or stalled handshakes cannot lock out a
health probe, the dialplan's ``CURL()`` or a click.

A client's malformed request (an oversized header, garbage) is its own problem: aiohttp's
error-level traceback for it becomes a debug line and one folded warning a minute
(``http.client_errors``); shed connections are folded the same way, per reason
(``http.connections_shed``). Both counters are on ``/metrics`` per listener
(:meth:`ConnectionGuard.snapshot`).

Size: the middleware, the deadlines and the bookkeeping share one connection table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(__name__)

#: What a plain-HTTP connection refused for want of room gets before it is closed.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
)
#: Seconds between two folded warnings of one kind.
FOLD_SECONDS = 60.0
#: Characters of a client error's description kept in a line.
DETAIL_CHARS = 200
#: Why a connection was shed (``http.connections_shed`` ``reason``, the metric's label):
#: full (every connection busy), evicted (made room for a newcomer), handshake (TLS not done
#: in time), no_request / slow_request (nothing, or not all of a request, in time),
#: stalled_reader (a response made no progress for ``write_timeout``).
SHED_REASONS = ("full", "evicted", "handshake", "no_request", "slow_request", "stalled_reader")
#: Seconds between two looks at a finished response's send buffer (see ``_idle``).
SENT_CHECK = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    #: Connections one listener holds at most (see also serving.descriptors).
    max_connections: int = 256
    #: Of those, from one client address (an office behind one NAT address shares it; a
    #: browser opens about 6 per site; on loopback every local client is one address).
    max_per_client: int = 64
    #: Seconds from the accept to a whole first request (TLS handshake, head and body).
    request_timeout: float = 10.0
    #: Seconds a kept-alive connection may wait for its next request (whole).
    idle_timeout: float = 15.0
    #: Seconds a response may make no progress towards its reader (nginx's send_timeout is
    #: 60 s): a slow download goes on, a reader that stopped is dropped.
    write_timeout: float = 60.0

    def within(self, share: int) -> ConnectionLimits:
        """These limits, with no more connections than ``share`` (a descriptor budget)."""
        return replace(
            self,
            max_connections=min(self.max_connections, share),
            max_per_client=min(self.max_per_client, share),
        )


@dataclass(slots=True)
class GuardStats:
    accepted: int = 0
    #: Connections closed before their time, by reason (SHED_REASONS).
    shed: Counter[str] = field(default_factory=Counter)
    #: Kept-alive connections closed after ``idle_timeout`` with nothing sent (normal).
    idle_closed: int = 0
    client_errors: int = 0


@dataclass(frozen=True, slots=True)
class ListenerSnapshot:
    """One listener's counters at one moment (``/metrics``, label ``listener``)."""

    listener: str
    open: int
    shed: Mapping[str, int]
    client_errors: int


@dataclass(eq=False, slots=True)
class Conn:
    #: The transport aiohttp sees: the socket's, or the TLS one once the handshake is done.
    transport: asyncio.BaseTransport
    client: str
    #: The socket's own transport (under TLS, its buffer holds what is encrypted already).
    raw: asyncio.BaseTransport
    handle: asyncio.TimerHandle | None = None
    stall: asyncio.TimerHandle | None = None
    sending: asyncio.TimerHandle | None = None
    busy: int = 0
    handshaking: bool = False
    served: bool = False  # a request was handled: the idle deadline applies
    partial: bool = False  # bytes arrived since the connection last waited
    gone: bool = False


class _Fold:
    """A warning at most every FOLD_SECONDS per kind, carrying how many were folded into it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def note(self, event: str, **fields: Any) -> None:
        kind = f"{event}/{fields.get('reason', '')}"  # each reason folds on its own
        self._folded[kind] = self._folded.get(kind, 0) + 1
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            log.debug(event, **fields)
            return
        self._next[kind] = now + FOLD_SECONDS
        log.warning(event, count=self._folded.pop(kind), per_seconds=FOLD_SECONDS, **fields)


class ConnectionGuard:
    """The connection table of one listener; see the module docstring."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        name: str = "http",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.name = name
        self.stats = GuardStats()
        self._fold = _Fold(clock)
        self._conns: dict[asyncio.BaseTransport, Conn] = {}
        #: Waiting connections, longest-waiting first (dicts keep insertion order).
        self._waiting: dict[Conn, None] = {}
        self._by_client: dict[str, dict[Conn, None]] = {}
        self._waiting_by_client: dict[str, dict[Conn, None]] = {}
        #: TLS handshakes under way (each connection's own task, cancelled by ``close``).
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def open(self) -> int:
        return len(self._conns)

    def snapshot(self) -> ListenerSnapshot:
        stats = self.stats
        return ListenerSnapshot(self.name, self.open, dict(stats.shed), stats.client_errors)

    def client_error_log(self) -> logging.LoggerAdapter[logging.Logger]:
        """For aiohttp's ``logger=``: a client's bad request is folded, a bug keeps its trace."""
        return _ClientErrorLog(self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is None:  # gone meanwhile
            return await handler(request)
        if request.body_exists:
            try:  # still under the connection's deadline: a stalled body is closed with it
                await request.read()
            except ConnectionError:
                raise web.HTTPRequestTimeout() from None
        self._busy(conn)
        task = asyncio.current_task()
        if task is not None:  # aiohttp writes the response in this task: done means idle
            task.add_done_callback(lambda _: self._idle(conn))
        else:  # pragma: no cover  (a middleware always runs in a task)
            self._idle(conn)
        return await handler(request)

    async def close(self) -> None:
        """Close every connection and handshake left (after the listening socket closed)."""
        self._closed = True
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        for conn in list(self._conns.values()):
            self._shed(conn)

    # -- what the protocol reports ---------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport, *, tls: bool = False) -> Conn | None:
        """A new connection, or None when there is no room (it is closed here)."""
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        limits = self.limits
        room = not self._closed
        if room and len(self._conns) >= limits.max_connections:
            room = self._evict(self._waiting)
        mine = self._by_client.get(client, {})
        if room and len(mine) >= limits.max_per_client:
            room = self._evict(self._waiting_by_client.get(client, {}))
        if not room:
            self._count_shed("full")
            if tls:  # a 503 in clear text means nothing to a TLS client
                abort(transport)
                return None
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSAL)
            transport.close()
            return None
        conn = Conn(transport, client, transport, handshaking=tls)
        self._conns[transport] = conn
        self._by_client.setdefault(client, {})[conn] = None
        self.stats.accepted += 1
        self._wait(conn, limits.request_timeout)
        return conn

    def handshake(self, conn: Conn, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (the TLS handshake) as a task the guard owns."""
        task = asyncio.get_running_loop().create_task(work, name=f"{self.name}-tls-handshake")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def secured(self, conn: Conn, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: aiohttp sees ``transport`` from now on."""
        del self._conns[conn.transport]
        conn.transport = transport
        conn.handshaking = False
        self._conns[transport] = conn

    def received(self, conn: Conn) -> None:
        if not conn.busy:
            conn.partial = True

    def write_paused(self, conn: Conn) -> None:
        """The send buffer is full: the reader has ``write_timeout`` to take some of it."""
        if conn.stall is None and not conn.gone:
            loop = asyncio.get_running_loop()
            conn.stall = loop.call_at(loop.time() + self.limits.write_timeout, self._stalled, conn)

    def write_resumed(self, conn: Conn) -> None:
        if conn.stall is not None:
            conn.stall.cancel()
            conn.stall = None

    def release(self, conn: Conn) -> None:
        if not conn.gone:
            self._drop(conn)

    # -- the connection table -------------------------------------------------------------

    def _busy(self, conn: Conn) -> None:
        if conn.sending is not None:  # the last response's tail: this request takes over
            conn.sending.cancel()
            conn.sending = None
            conn.busy -= 1
        conn.busy += 1
        conn.served = True
        conn.partial = False
        self._unwait(conn)

    def _idle(self, conn: Conn) -> None:
        """A handler is done; its response may still be in the send buffer (a download's
        tail): the connection stays busy until that is sent, so it is neither evicted nor
        cut short by the idle deadline (a reader that stops is ``write_timeout``'s)."""
        conn.sending = None
        if conn.busy == 1 and not conn.gone and _buffered(conn):
            loop = asyncio.get_running_loop()
            conn.sending = loop.call_at(loop.time() + SENT_CHECK, self._idle, conn)
            return
        conn.busy -= 1
        if conn.busy == 0 and not conn.gone:
            self._wait(conn, self.limits.idle_timeout)

    def _wait(self, conn: Conn, timeout: float) -> None:
        self._waiting[conn] = None
        self._waiting_by_client.setdefault(conn.client, {})[conn] = None
        loop = asyncio.get_running_loop()
        conn.handle = loop.call_at(loop.time() + timeout, self._expire, conn)

    def _unwait(self, conn: Conn) -> None:
        self._waiting.pop(conn, None)
        waiting = self._waiting_by_client.get(conn.client)
        if waiting is not None:
            waiting.pop(conn, None)
            if not waiting:
                del self._waiting_by_client[conn.client]
        if conn.handle is not None:
            conn.handle.cancel()
            conn.handle = None

    def _expire(self, conn: Conn) -> None:
        conn.handle = None
        if conn.gone or conn.busy:
            return
        if conn.handshaking:
            self._count_shed("handshake")
        elif conn.partial:
            self._count_shed("slow_request")
        elif not conn.served:
            self._count_shed("no_request")
        else:
            self.stats.idle_closed += 1
        self._shed(conn)

    def _stalled(self, conn: Conn) -> None:
        conn.stall = None
        if not conn.gone:
            self._count_shed("stalled_reader")
            self._shed(conn)

    def _evict(self, waiting: MutableMapping[Conn, None]) -> bool:
        """Close the longest-waiting connection of ``waiting``; False when there is none."""
        conn = next(iter(waiting), None)
        if conn is None:
            return False
        self._count_shed("evicted")
        self._shed(conn)
        return True

    def _shed(self, conn: Conn) -> None:
        """Out of the table and closed at once: abort, because a graceful close waits for a
        send buffer the peer may never read (and under TLS for its close_notify)."""
        self._drop(conn)
        abort(conn.transport)

    def _drop(self, conn: Conn) -> None:
        conn.gone = True
        self._unwait(conn)
        self.write_resumed(conn)
        if conn.sending is not None:
            conn.sending.cancel()
            conn.sending = None
        self._conns.pop(conn.transport, None)
        mine = self._by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_client[conn.client]

    def _count_shed(self, reason: str) -> None:
        self.stats.shed[reason] += 1
        self._fold.note("http.connections_shed", listener=self.name, reason=reason)

    def client_error(self, exc: BaseException) -> None:
        self.stats.client_errors += 1
        detail = f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
        self._fold.note("http.client_errors", listener=self.name, detail=detail)


def _buffered(conn: Conn) -> bool:
    """Bytes of a response not yet handed to the kernel (TLS: either layer)."""
    return any(
        isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size() > 0
        for transport in {conn.transport, conn.raw}
    )


def abort(transport: asyncio.BaseTransport) -> None:
    """Close now, whatever is buffered (every stream transport can; the base type cannot)."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:  # pragma: no cover
        transport.close()


class _ClientErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, except that a client's malformed request is not our error."""

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._guard = guard

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError | ConnectionError):
            self._guard.client_error(exc)
            return
        super().exception(msg, *args, **kwargs)
