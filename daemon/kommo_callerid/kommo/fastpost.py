"""A warm keep-alive connection for the call notification's POST (issue 22).

aiohttp on Python 3.11 writes a request's body from a task of its own (eager task start is
3.12+): the POST leaves the machine one or more loop turns after the notification asked for
it, and AMI data queued meanwhile is parsed first. Here the whole request (line, headers,
JSON body) is written in one ``transport.write`` from the caller's own task, on a connection
opened beforehand, and the answer is read by a small HTTP/1.1 parser.

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

Size: a connection pool with its owned opener task and an HTTP/1.1 response parser (length,
chunked, read-to-close) belong together; split, neither is usable alone.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from kommo_callerid.kommo.limits import retry_delay

#: The answer's head (status line and headers) may not be longer than this.
MAX_HEAD = 64 * 1024
#: Seconds one connection attempt may take (TLS handshake included).
CONNECT_TIMEOUT = 10.0
#: The longest pause between two failed connection attempts.
RECONNECT_CAP = 30.0


class FastPathUnavailable(Exception):
    """No answer from the fast path: send the request the ordinary way."""


class UnreadableAnswer(Exception):
    """The bytes on the connection are not an HTTP/1.1 answer this parser will vouch for."""


@dataclass(frozen=True, slots=True)
class FastAnswer:
    status: int
    #: The media type, lower case without parameters (what aiohttp's ``content_type`` says).
    content_type: str
    #: None: larger than the body cap, not read.
    body: bytes | None
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class _Parsed:
    answer: FastAnswer
    #: The connection may carry another request.
    reusable: bool


class _Connection(asyncio.Protocol):
    """One socket: buffers what arrives and wakes the request that waits for it."""

    def __init__(self, pool: FastPost) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        #: It carried a request: a loss later is the server's keep-alive timeout, not a fault.
        self.served = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods
        self.transport = cast(asyncio.Transport, transport)

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

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

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


class FastPost:
    """Up to ``size`` keep-alive connections to ``base_url``'s host, opened in the background
    by an owned task; :meth:`post` uses an idle one or raises :class:`FastPathUnavailable`."""

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
        while self._idle:
            self._idle.popleft().close()
        await asyncio.sleep(0)  # let connection_lost run before the loop may close

    async def post(self, path: str, authorization: str, body: bytes, timeout: float) -> FastAnswer:
        """Kommo's answer to ``POST path``; raises :class:`FastPathUnavailable` (not sent,
        or no usable answer: send it again the ordinary way) or :class:`TimeoutError`."""
        conn = self._take()
        try:
            request = self._request(path, authorization, len(body))
        except (UnicodeEncodeError, ValueError):
            self._give_back(conn)
            raise FastPathUnavailable from None
        assert conn.transport is not None
        self._busy += 1
        try:
            conn.transport.write(request + body)
            async with asyncio.timeout(timeout):
                parsed = await self._read(conn)
        except BaseException as exc:
            self._busy -= 1
            conn.close()
            self.want()
            if isinstance(exc, UnreadableAnswer):
                raise FastPathUnavailable from None
            raise
        self._busy -= 1
        conn.buffer.clear()  # a reusable answer ended exactly at the buffer's end
        conn.served = True
        self._failures = 0
        if parsed.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
            self.want()
        self.sent += 1
        return parsed.answer

    def _take(self) -> _Connection:
        while self._idle:
            conn = self._idle.popleft()
            transport = conn.transport
            if not conn.closed and not conn.buffer and transport and not transport.is_closing():
                return conn
            conn.close()  # closed, or spoke out of turn: not ours to trust
        self.want()
        raise FastPathUnavailable

    def _give_back(self, conn: _Connection) -> None:
        self._idle.appendleft(conn)

    def _request(self, path: str, authorization: str, length: int) -> bytes:
        if any(char in authorization for char in "\r\n"):
            raise ValueError("a line break in the Authorization header")
        return (
            f"POST {self._prefix}{path} HTTP/1.1\r\n{self._head}"
            f"Authorization: {authorization}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
        ).encode("latin-1")

    async def _read(self, conn: _Connection) -> _Parsed:
        while True:
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

    def _lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
            if not conn.served:
                self._failures += 1
            # The server closed an idle connection (its keep-alive timeout): open the next
            # one now, so the call after a quiet spell still finds one warm.
            if not self._closed:
                self.want()


def parse_response(buffer: bytearray, eof: bool, max_body: int) -> _Parsed | None:
    """The answer at the start of ``buffer``, or None while more bytes are needed; raises
    :class:`UnreadableAnswer`. Interim (1xx) answers are dropped from the buffer."""
    head = _final_head(buffer)
    if head is None:
        return None
    status, version, headers, start = head
    connection = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    raw_type = headers.get("content-type")
    content_type = "application/octet-stream"
    if raw_type is not None:
        content_type = raw_type.split(";", 1)[0].strip().lower()
    retry_after = headers.get("retry-after")

    def answer(body: bytes | None, reusable: bool) -> _Parsed:
        return _Parsed(FastAnswer(status, content_type, body, retry_after), reusable)

    if status in (204, 304):
        return answer(b"", keep and len(buffer) == start)
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower().split(",")[-1].strip() != "chunked":
            raise UnreadableAnswer
        return _chunked(buffer, start, max_body, answer, keep)
    length_text = headers.get("content-length")
    if length_text is None:  # the body runs until the server closes the connection
        if len(buffer) - start > max_body:
            return answer(None, False)
        return answer(bytes(buffer[start:]), False) if eof else None
    if not length_text.isdigit():
        raise UnreadableAnswer
    length = int(length_text)
    if length > max_body:
        return answer(None, False)
    if len(buffer) - start < length:
        return None
    return answer(bytes(buffer[start : start + length]), keep and len(buffer) == start + length)


def _final_head(buffer: bytearray) -> tuple[int, str, dict[str, str], int] | None:
    """Status, version, headers and where the body starts, once the head is complete."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise UnreadableAnswer
            return None
        if end > MAX_HEAD:
            raise UnreadableAnswer
        status, version, headers = _head(bytes(buffer[:end]))
        if status >= 200:
            return status, version, headers, end + 4
        if status == 101:
            raise UnreadableAnswer
        del buffer[: end + 4]


def _head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
        raise UnreadableAnswer
    status = int(parts[1])
    if not 100 <= status <= 599:
        raise UnreadableAnswer
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise UnreadableAnswer
        key, value = name.lower(), value.strip()
        if key in ("content-length", "transfer-encoding") and headers.get(key, value) != value:
            raise UnreadableAnswer  # conflicting framing: never guess where the answer ends
        headers[key] = value
    if "content-length" in headers and "transfer-encoding" in headers:
        raise UnreadableAnswer
    return status, parts[0], headers


def _chunked(
    buffer: bytearray,
    start: int,
    max_body: int,
    answer: Callable[[bytes | None, bool], _Parsed],
    reusable: bool,
) -> _Parsed | None:
    chunks: list[bytes] = []
    size, pos = 0, start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            if len(buffer) - pos > MAX_HEAD:
                raise UnreadableAnswer
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        try:
            count = int(size_text, 16)
        except ValueError:
            raise UnreadableAnswer from None
        if count < 0 or not size_text.isalnum():
            raise UnreadableAnswer
        if count == 0:
            if buffer[line_end + 2 : line_end + 4] == b"\r\n":
                done = line_end + 4
            else:  # trailers: skipped
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                done = trailer_end + 4
            return answer(b"".join(chunks), reusable and len(buffer) == done)
        size += count
        if size > max_body:
            return answer(None, False)
        data_start = line_end + 2
        data_end = data_start + count
        if len(buffer) < data_end + 2:
            return None
        if buffer[data_end : data_end + 2] != b"\r\n":
            raise UnreadableAnswer
        chunks.append(bytes(buffer[data_start:data_end]))
        pos = data_end + 2
