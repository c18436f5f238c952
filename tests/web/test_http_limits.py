"""The local endpoint's listener bounds (issue 18, points 8, 17, 18), over real sockets: idle
and slowloris connections are reaped within their deadline, a flood of idle sockets cannot
lock a probe out, an oversized header is a folded line and not a traceback, HEAD /healthz."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from kommo_callerid.core.config import HttpConfig, LogConfig
from kommo_callerid.core.logging import configure_logging
from kommo_callerid.serving.guard import ConnectionLimits
from kommo_callerid.web.server import Health, HttpServer

from support import wait_for

FAST = ConnectionLimits(
    max_connections=64, max_per_client=64, request_timeout=1.0, idle_timeout=1.0
)


class _Metrics:
    content_type = "text/plain"

    def render(self) -> bytes:
        return b"up 1\n"


class _Names:
    async def name_for(self, raw: str) -> str:
        return "John Doe" if raw else ""


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The daemon's JSON log chain (stdlib aiohttp records included) writing to a buffer."""
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    level = logging.getLogger().level
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), stream=stream)
    yield stream
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


class _SlowNames:
    """A lookup that waits until released: its connection stays busy."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def name_for(self, raw: str) -> str:
        self.waiting += 1
        await self.release.wait()
        return "John Doe"


async def serve(
    limits: ConnectionLimits | None = FAST, names: _Names | _SlowNames | None = None
) -> HttpServer:
    server = HttpServer(
        HttpConfig(listen="127.0.0.1:0"),
        health=lambda: Health(ami_connected=True, facts={"version": "test"}),
        metrics=_Metrics(),
        callerid=names or _Names(),
        limits=limits,
    )
    await server.start()
    return server


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    running = await serve()
    try:
        yield running
    finally:
        await running.stop()


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def test_head_healthz_answers_200_without_a_body(server: HttpServer) -> None:
    assert server.port is not None
    answer = await exchange(server.port, get("/healthz", "HEAD"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"application/json" in head
    assert body == b""
    got = await exchange(server.port, get("/healthz"))
    assert got.startswith(b"HTTP/1.1 200 ") and b'"ami": "connected"' in got


async def test_300_slowloris_connections_are_reaped_within_the_request_timeout() -> None:
    limits = ConnectionLimits(max_connections=400, max_per_client=400, request_timeout=1.0)
    server = await serve(limits)
    assert server.port is not None
    port = server.port
    try:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        for _, writer in conns:  # half a request head, then a trickle that never ends it
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.4)
        for _, writer in conns:
            writer.write(b"a")
        closed = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), 10) for reader, _ in conns),
            return_exceptions=True,
        )
        reaped_in = loop.time() - started
        assert all(isinstance(data, bytes) for data in closed)  # EOF, not our timeout
        assert reaped_in < limits.request_timeout + 4
        await wait_for(lambda: server.connections == 0)
        for _, writer in conns:
            writer.close()
        assert (await exchange(port, get("/healthz"))).startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()


async def test_a_flood_of_idle_connections_cannot_lock_out_a_probe(server: HttpServer) -> None:
    """At the cap the longest-waiting connection makes room for the newcomer."""
    assert server.port is not None
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
    try:
        await wait_for(lambda: server.connections == FAST.max_connections)
        for _ in range(3):
            assert (await exchange(server.port, get("/healthz"))).startswith(b"HTTP/1.1 200 ")
        assert server.connections <= FAST.max_connections
    finally:
        for _, writer in idle:
            writer.close()


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(
    server: HttpServer,
) -> None:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive
        assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.read(), FAST.idle_timeout + 4) == b""
    finally:
        writer.close()


async def test_200_oversized_headers_log_a_folded_line_and_no_traceback(
    server: HttpServer, log_stream: io.StringIO
) -> None:
    assert server.port is not None
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    for _ in range(200):
        answer = await exchange(server.port, request)
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    logged = log_stream.getvalue()
    assert "Traceback" not in logged
    assert len(logged.encode()) < 2048, logged[:2000]
    assert logged.count('"http.client_errors"') == 1
    assert '"level": "error"' not in logged


async def test_busy_connections_are_never_evicted_and_a_newcomer_gets_a_503() -> None:
    names = _SlowNames()
    server = await serve(ConnectionLimits(max_connections=2, max_per_client=2), names)
    assert server.port is not None
    port = server.port
    try:
        lookups = [
            asyncio.create_task(exchange(port, get("/callerid?number=18305803077")))
            for _ in range(2)
        ]
        await wait_for(lambda: names.waiting == 2)
        refused = await exchange(port, get("/healthz"))
        assert refused.startswith(b"HTTP/1.1 503 ")
        names.release.set()
        for answer in await asyncio.gather(*lookups):
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"John Doe")
        await wait_for(lambda: server.connections == 0)
        assert (await exchange(port, get("/healthz"))).startswith(b"HTTP/1.1 200 ")
    finally:
        names.release.set()
        await server.stop()
