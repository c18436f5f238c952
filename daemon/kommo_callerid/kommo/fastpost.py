"""Warm keep-alive connections for the first attempt of Kommo requests (issue 22).

aiohttp on Python 3.11 writes a request's body from a task of its own (eager task start is
3.12+), and builds a request, a response and their headers in several layers: per request
that is the largest share of the daemon's CPU. Here the whole request (line, headers, JSON
body) is written in one ``transport.write`` from the caller's own task, on a connection
opened beforehand, and the answer is read by a small HTTP/1.1 parser
(:mod:`kommo_callerid.kommo.fastparse`). The transport sends a notification's POST, a
lookup's GET and the journal's JSON POSTs this way.

It only ever adds a way out: the transport asks it inside the rate-limit slot it already
holds (gate, limiter and authorisation unchanged), and anything unusual — no idle connection
yet, one the server closed, an answer it cannot parse — raises :class:`FastPathUnavailable`
and the transport sends the request through aiohttp as before. An answer it did read comes
back as :class:`FastAnswer`, which the transport maps exactly as it maps aiohttp's. A
connection the server closes before answering a request written on it is the usual
keep-alive race (the server closed it idle, without reading the request): the aiohttp
resend is then the only copy Kommo sees, and it goes out in the same slot. Only a request's
first attempt comes here; retries (after a 401's token refresh, a 429, a 5xx) go the
ordinary way. Never through a proxy: the transport has no fast path when one is configured.

A request is written (:meth:`FastPost.write`) and its answer read (:meth:`FastPost.answer`)
in two halves, so a notification can be written in the caller's turn before anything is
awaited (``KommoTransport.send_now``). A request's head is checked and encoded once per
method, target and token, not once per call.

Size: the pool, its connections and a request's two halves; parsing is in ``fastparse``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import NamedTuple, cast
from urllib.parse import urlsplit

from kommo_callerid.kommo.fastparse import FastAnswer, Parsed, UnreadableAnswer, parse_response
from kommo_callerid.kommo.limits import retry_delay

__all__ = ["FastAnswer", "FastPathUnavailable", "FastPost"]

#: Seconds one connection attempt may take (TLS handshake included).
CONNECT_TIMEOUT = 10.0
#: The longest pause between two failed connection attempts.
RECONNECT_CAP = 30.0
#: Characters a request target (path and query) may hold: what ``urlencode`` and our paths
#: produce; anything else (a space, a line break) would split the request line.
#: Request heads kept (:meth:`FastPost._request`): a notification's, the journal's, a few
#: lookups'.
_MAX_HEADS = 16
_TARGET_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?#[]@!$&'()*+,;=%"
)


class FastPathUnavailable(Exception):
    """No answer from the fast path: send the request the ordinary way."""


class _Connection(asyncio.Protocol):
    """One socket: buffers what arrives and wakes the request that waits for it."""

    def __init__(self, pool: FastPost) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        #: It carried a request: a loss later is the server's keep-alive timeout, not a fault.
        self.served = False
        #: The request on it ran out of time.
        self.expired = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods
        self.transport = cast(asyncio.Transport, transport)
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        self._pool._lost(self)
        self._pool.open_now.discard(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        self.expired = True
        self._wake()

    async def wait_data(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Exchange(NamedTuple):
    """A request written by :meth:`FastPost.write`, its answer not read yet."""

    conn: _Connection
    timer: asyncio.TimerHandle


class FastPost:
    """Up to ``size`` keep-alive connections to ``base_url``'s host, opened in the background
    by an owned task; :meth:`write` uses an idle one or raises :class:`FastPathUnavailable`."""

    def __init__(
        self,
        base_url: str,
        user_agent: str,
        *,
        max_body: int,
        size: int = 1,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host:  # an IPv6 literal keeps its brackets in Host
            host_header = f"[{self._host}]" + ("" if default_port else f":{self._port}")
        self._prefix = parts.path.rstrip("/")
        self._head = f"Host: {host_header}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n"
        self._max_body = max_body
        self._size = size
        self._ssl: ssl.SSLContext | None = None
        if self._tls:  # the transport passes the context its aiohttp session uses
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: deque[_Connection] = deque()
        #: Checked, encoded request heads by (method, target, Authorization).
        self._heads: dict[tuple[str, str, str], bytes] = {}
        #: Every connection whose socket is open, idle, busy, or made by an opener cancelled
        #: before it could keep it (create_connection's transport is lost with a cancel):
        #: close() closes them all.
        self.open_now: set[_Connection] = set()
        self._busy = 0
        self._opener: asyncio.Task[None] | None = None
        #: Connections in a row that failed or were lost before carrying a request.
        self._failures = 0
        self._closed = False
        #: Requests answered through this path (tests and benchmarks count them).
        self.sent = 0

    @property
    def ready(self) -> bool:
        """An idle connection is open."""
        return any(not conn.closed for conn in self._idle)

    def want(self) -> None:
        """Make sure the opener runs while the pool is short of connections."""
        if self._closed or len(self._idle) + self._busy >= self._size:
            return
        if self._opener is None or self._opener.done():
            self._opener = asyncio.get_running_loop().create_task(self._open())

    async def close(self) -> None:
        self._closed = True
        opener, self._opener = self._opener, None
        if opener is not None:
            opener.cancel()
            await asyncio.gather(opener, return_exceptions=True)
        self._idle.clear()
        for conn in list(self.open_now):
            conn.close()
        await asyncio.sleep(0)  # let connection_lost run before the loop may close

    def write(
        self,
        method: str,
        target: str,
        authorization: str,
        body: bytes | None,
        timeout: float,
        *,
        spare: int = 0,
    ) -> Exchange:
        """``method target`` (a path with its query string; ``body``: JSON, None for none)
        written now, in the caller's turn, on an idle connection; raises
        :class:`FastPathUnavailable` when nothing was written. The exchange must then be
        given to :meth:`answer` at once (it holds the connection). ``spare``: how many idle
        connections must stay for others (the journal leaves one to a notification)."""
        try:
            request = self._request(method, target, authorization, body)
        except (UnicodeEncodeError, ValueError):
            raise FastPathUnavailable from None
        conn = self._take(spare)
        assert conn.transport is not None
        self._busy += 1
        # A plain timer, not asyncio.timeout: this wait is the hot path's, and the timer
        # only wakes the reader (nothing is cancelled).
        timer = asyncio.get_running_loop().call_later(timeout, conn.expire)
        conn.transport.write(request)  # asyncio's transports buffer, they do not raise
        return Exchange(conn, timer)

    async def answer(self, exchange: Exchange) -> FastAnswer:
        """Kommo's answer to a written exchange; raises :class:`FastPathUnavailable` (no
        usable answer: send it again the ordinary way) or :class:`TimeoutError`."""
        conn = exchange.conn
        try:
            parsed = await self._read(conn)
        except BaseException as exc:
            self._busy -= 1
            conn.close()
            self.want()
            if isinstance(exc, UnreadableAnswer):
                raise FastPathUnavailable from None
            raise
        finally:
            exchange.timer.cancel()
        self._busy -= 1
        conn.buffer.clear()  # a reusable answer ended exactly at the buffer's end
        conn.served = True
        self._failures = 0
        if parsed.reusable and not conn.closed and not self._closed:
            self._idle.append(conn)
        else:  # (a pool closed while this request was out keeps no connection open)
            conn.close()
            self.want()
        self.sent += 1
        return parsed.answer

    def _take(self, spare: int) -> _Connection:
        while len(self._idle) > spare:
            conn = self._idle.pop()  # the last one used: the others stay spare
            transport = conn.transport
            if not conn.closed and not conn.buffer and transport and not transport.is_closing():
                return conn
            conn.close()  # closed, or spoke out of turn: not ours to trust
        self.want()
        raise FastPathUnavailable

    def _request(self, method: str, target: str, authorization: str, body: bytes | None) -> bytes:
        key = (method, target, authorization)
        head = self._heads.get(key)
        if head is None:
            head = self._head_of(method, target, authorization)
            if len(self._heads) >= _MAX_HEADS:  # lookups' targets differ: bounded
                self._heads.clear()
            self._heads[key] = head
        if body is None:
            framing = b"\r\n" if method == "GET" else b"Content-Length: 0\r\n\r\n"
            return head + framing
        return b"%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            head,
            len(body),
            body,
        )

    def _head_of(self, method: str, target: str, authorization: str) -> bytes:
        """A request's lines up to its framing, checked: the same for every notification
        (built and checked once per token, not per call)."""
        if any(char in authorization for char in "\r\n"):
            raise ValueError("a line break in the Authorization header")
        if not _TARGET_CHARS.issuperset(target) or method not in ("GET", "POST"):
            raise ValueError("a request target or method this path does not send")
        return (
            f"{method} {self._prefix}{target} HTTP/1.1\r\n{self._head}"
            f"Authorization: {authorization}\r\nConnection: keep-alive\r\n"
        ).encode("latin-1")

    async def _read(self, conn: _Connection) -> Parsed:
        if not (conn.buffer or conn.closed or conn.expired):  # the usual case: nothing yet
            await conn.wait_data()
        while True:
            if conn.expired:
                raise TimeoutError
            parsed = parse_response(conn.buffer, conn.closed, self._max_body)
            if parsed is not None:
                return parsed
            if conn.closed:
                raise UnreadableAnswer
            await conn.wait_data()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed and len(self._idle) + self._busy < self._size:
            if self._failures:  # capped, jittered: a server that drops us is not hammered
                await asyncio.sleep(retry_delay(self._failures, cap=RECONNECT_CAP))
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    transport, conn = await loop.create_connection(
                        lambda: _Connection(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
            except Exception:  # refused, TLS, DNS, a bad host: only the fast path waits
                self._failures += 1
                continue
            if conn.closed or conn.transport is None:  # lost at once: not a usable connection
                transport.close()
                self._failures += 1
                continue
            self._idle.append(conn)

    def opened(self, conn: _Connection) -> None:
        if self._closed:  # made after close(): an opener's last connection
            conn.close()
            return
        self.open_now.add(conn)

    def _lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
            if not conn.served:
                self._failures += 1
            # The server closed an idle connection (its keep-alive timeout): open the next
            # one now, so the call after a quiet spell still finds one warm.
            if not self._closed:
                self.want()
