"""A bounded aiohttp listener: at most so many connections (in all, and per client address),
a deadline for each request to arrive whole, and one for an idle keep-alive connection.

Why: aiohttp alone keeps every connection a client opens and waits for a request head as long
as the client likes, so 1,100 idle sockets ran the daemon out of descriptors and 300
slowloris connections were never reaped. Here every accepted socket passes through
:class:`_GuardedProtocol` (a thin asyncio protocol in front of aiohttp's own) and the app's
first middleware, which together know each connection's state:

- *waiting*: accepted or done with a response, no request being handled. A deadline runs:
  ``request_timeout`` for a new connection, ``idle_timeout`` after a response; head and body
  of the next request must both be in by then (the middleware reads the body before the
  handler runs), or the connection is closed.
- *busy*: a handler runs or its response is being written; no deadline (handlers bound
  themselves), never evicted.

At ``max_connections`` (or a client's ``max_per_client``) a new connection takes the place of
the longest-waiting one; when every connection is busy it gets a bare 503 and is closed. So a
flood of idle sockets cannot lock out a health probe or the dialplan's ``CURL()``.

A client's malformed request (an oversized header, garbage) is its own problem: aiohttp's
error-level traceback for it becomes a debug line and one folded warning a minute
(``http.client_errors``); refused, evicted and timed-out connections are folded the same way
(``http.connections_shed``). Both the local endpoint (``web``) and the public one build on
this; it sits below them in the import layers and imports no room.

Size: the protocol, the middleware and the bookkeeping share one connection table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(__name__)

#: What a connection refused for want of room gets before it is closed (a probe sees 503).
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
)
#: Seconds between two folded warnings of one kind.
FOLD_SECONDS = 60.0
#: Characters of a client error's description kept in a line.
DETAIL_CHARS = 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    #: Connections one listener holds at most (see also serving.descriptors).
    max_connections: int = 256
    #: Of those, from one client address (on loopback every local client is one address).
    max_per_client: int = 64
    #: Seconds a new connection has to deliver a whole request (head and body).
    request_timeout: float = 10.0
    #: Seconds a kept-alive connection may wait for its next request (whole).
    idle_timeout: float = 15.0

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
    refused: int = 0
    evicted: int = 0
    #: Closed because a request did not arrive whole in time (a slow or stalled client).
    timed_out: int = 0
    #: Kept-alive connections closed after ``idle_timeout`` with nothing sent (normal).
    idle_closed: int = 0
    client_errors: int = 0


@dataclass(eq=False, slots=True)
class _Conn:
    transport: asyncio.BaseTransport
    client: str
    handle: asyncio.TimerHandle | None = None
    busy: int = 0
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
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        #: Waiting connections, longest-waiting first (dicts keep insertion order).
        self._waiting: dict[_Conn, None] = {}
        self._by_client: dict[str, dict[_Conn, None]] = {}
        self._waiting_by_client: dict[str, dict[_Conn, None]] = {}
        self._closed = False

    @property
    def open(self) -> int:
        return len(self._conns)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        """A factory for ``loop.create_server`` that guards what ``inner`` makes."""
        return lambda: _GuardedProtocol(self, inner())

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

    def close(self) -> None:
        """Close every connection left (after the listening socket closed)."""
        self._closed = True
        for conn in list(self._conns.values()):
            self._drop(conn)
            conn.transport.close()

    # -- the connection table -------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> _Conn | None:
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
            self.stats.refused += 1
            self._fold.note("http.connections_shed", listener=self.name, reason="full")
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSAL)
            transport.close()
            return None
        conn = _Conn(transport, client)
        self._conns[transport] = conn
        self._by_client.setdefault(client, {})[conn] = None
        self.stats.accepted += 1
        self._wait(conn, limits.request_timeout)
        return conn

    def received(self, conn: _Conn) -> None:
        if not conn.busy:
            conn.partial = True

    def release(self, conn: _Conn) -> None:
        if not conn.gone:
            self._drop(conn)

    def _busy(self, conn: _Conn) -> None:
        conn.busy += 1
        conn.served = True
        conn.partial = False
        self._unwait(conn)

    def _idle(self, conn: _Conn) -> None:
        conn.busy -= 1
        if conn.busy == 0 and not conn.gone:
            self._wait(conn, self.limits.idle_timeout)

    def _wait(self, conn: _Conn, timeout: float) -> None:
        self._waiting[conn] = None
        self._waiting_by_client.setdefault(conn.client, {})[conn] = None
        loop = asyncio.get_running_loop()
        conn.handle = loop.call_at(loop.time() + timeout, self._expire, conn)

    def _unwait(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        waiting = self._waiting_by_client.get(conn.client)
        if waiting is not None:
            waiting.pop(conn, None)
            if not waiting:
                del self._waiting_by_client[conn.client]
        if conn.handle is not None:
            conn.handle.cancel()
            conn.handle = None

    def _expire(self, conn: _Conn) -> None:
        conn.handle = None
        if conn.gone or conn.busy:
            return
        if conn.partial or not conn.served:
            self.stats.timed_out += 1
            reason = "slow_request" if conn.partial else "no_request"
            self._fold.note("http.connections_shed", listener=self.name, reason=reason)
        else:
            self.stats.idle_closed += 1
        self._drop(conn)
        conn.transport.close()

    def _evict(self, waiting: MutableMapping[_Conn, None]) -> bool:
        """Close the longest-waiting connection of ``waiting``; False when there is none."""
        conn = next(iter(waiting), None)
        if conn is None:
            return False
        self.stats.evicted += 1
        self._fold.note("http.connections_shed", listener=self.name, reason="evicted")
        self._drop(conn)
        conn.transport.close()
        return True

    def _drop(self, conn: _Conn) -> None:
        conn.gone = True
        self._unwait(conn)
        self._conns.pop(conn.transport, None)
        mine = self._by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_client[conn.client]

    def client_error(self, exc: BaseException) -> None:
        self.stats.client_errors += 1
        detail = f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
        self._fold.note("http.client_errors", listener=self.name, detail=detail)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol behind the guard: a refused connection never reaches it."""

    __slots__ = ("_conn", "_guard", "_inner")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn = self._guard.admit(transport)
        if self._conn is not None:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._guard.received(self._conn)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._conn is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard.release(self._conn)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._inner.resume_writing()


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


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a :class:`ConnectionGuard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kw: Any
    ) -> None:
        super().__init__(runner, host, port, **kw)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()
        self.guard.close()


@dataclass
class GuardedListener:
    """An aiohttp app served on ``host:port`` behind a :class:`ConnectionGuard`.

    ``await start(app)`` puts the guard's middleware first and binds (port 0 picks one: see
    ``port``); ``await stop()`` closes the socket, then every connection.
    """

    host: str
    port: int
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    name: str = "http"
    runner_options: dict[str, Any] = field(default_factory=dict)
    guard: ConnectionGuard = field(init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.guard = ConnectionGuard(self.limits, name=self.name)

    async def start(self, app: web.Application, *, ssl_context: Any = None) -> None:
        app.middlewares.insert(0, self.guard.middleware)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # aiohttp's own idle timer, never later than the guard's
            keepalive_timeout=self.limits.idle_timeout,
            logger=self.guard.client_error_log(),
            **{"shutdown_timeout": 1.0, **self.runner_options},
        )
        await runner.setup()
        site = GuardedSite(runner, self.host, self.port, self.guard, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
