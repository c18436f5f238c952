"""Recordings on the public listener's bounds (issue 18, point 8), over real sockets: a long,
slow download is busy (never evicted, never cut by the request or idle deadlines) while a
flood of idle connections churns; a reader that stops reading is dropped after
``write_timeout`` (the kernel's ``TCP_USER_TIMEOUT``) and its download slot is free again;
one that trickles (every byte acknowledged) is dropped by the guard, over TLS and plain HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from recordings_site import Clock, lay_out, self_signed

from kommo_callerid.core.config import PublicConfig, RecordingsConfig
from kommo_callerid.public.server import PublicServer
from kommo_callerid.recordings.serve import RecordingServer, recording_routes
from kommo_callerid.recordings.token import Claim, sign
from kommo_callerid.serving.guard import ConnectionLimits

from support import wait_for

KEY = b"k" * 32
WHEN = datetime(2024, 1, 2, 10, 15, 0)
UID = "1704190500.10"
#: Larger than every buffer on the way (the client's small receive buffer, the server's
#: autotuned send buffer on loopback): a reader that stops really blocks the sender.
BIG = 24 * 1024 * 1024
LIMITS = ConnectionLimits(
    max_connections=8, max_per_client=8, request_timeout=0.5, idle_timeout=0.5, write_timeout=1.5
)


@dataclass
class Site:
    server: PublicServer
    recordings: RecordingServer
    tls: ssl.SSLContext | None
    path: str

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


async def _site(tmp_path: Path, *, tls: bool) -> Site:
    monitor = tmp_path / "monitor"
    lay_out(monitor, UID, WHEN, b"\x01" * BIG)
    recordings = RecordingServer(
        RecordingsConfig(directory=monitor), KEY, clock=Clock(1_704_200_000.0), max_downloads=1
    )
    client: ssl.SSLContext | None = None
    if tls:
        cert, key = self_signed(tmp_path)
        config = PublicConfig(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
        client = ssl.create_default_context(cafile=str(cert))
    else:
        config = PublicConfig(listen="127.0.0.1:0")
    server = PublicServer(config, frozenset, limits=LIMITS)
    for route in recording_routes(recordings):
        server.add_route(route.method, route.path, route.handler)
    await server.start()
    return Site(server, recordings, client, "/recordings/" + sign(KEY, Claim(UID, WHEN.date(), 0)))


@pytest.fixture(params=["tls", "plain"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    running = await _site(tmp_path, tls=request.param == "tls")
    try:
        yield running
    finally:
        await running.server.stop()


async def _request(
    site: Site, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect: the window the server sees stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", site.port))
    reader, writer = await asyncio.open_connection(
        sock=sock,
        ssl=site.tls,
        server_hostname="localhost" if site.tls else None,
        limit=4096,  # the stream stops reading the socket once this much waits
    )
    writer.write(f"GET {site.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return reader, writer


async def test_a_slow_download_outlives_the_deadlines_and_a_flood_of_idle_connections(
    site: Site,
) -> None:
    reader, writer = await _request(site)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    guard = site.server.guard
    assert guard is not None
    flood: list[asyncio.StreamWriter] = []
    received = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while received < BIG:
            chunk = await asyncio.wait_for(reader.read(256 * 1024), 10)
            assert chunk, f"cut after {received} of {BIG} bytes"
            received += len(chunk)
            if len(flood) < 40:  # idle newcomers evict each other, never the download
                flood.append((await asyncio.open_connection("127.0.0.1", site.port))[1])
            await asyncio.sleep(0.01)
        took = loop.time() - started
    finally:
        writer.close()
        for idle in flood:
            idle.close()
    assert received == BIG
    assert took > LIMITS.request_timeout + LIMITS.idle_timeout  # it did outlive both
    assert guard.stats.shed["evicted"] > 0 and guard.stats.shed["stalled_reader"] == 0
    assert site.recordings.stats.served[200] == 1


async def test_a_reader_that_stops_is_dropped_and_frees_its_download_slot(site: Site) -> None:
    guard = site.server.guard
    assert guard is not None
    reader, writer = await _request(site, rcvbuf=4096)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:  # and then it reads nothing more: the one download slot stays taken until dropped
        await wait_for(lambda: guard.open == 0, LIMITS.write_timeout + 20)
        dropped_in = loop.time() - started
    finally:
        writer.close()
    assert dropped_in < LIMITS.write_timeout + 15
    again, other = await _request(site)  # the slot is free: a new download starts
    try:
        assert (await again.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    finally:
        other.close()
    assert site.recordings.stats.busy == 0


async def test_a_reader_that_trickles_is_dropped_as_stalled(site: Site) -> None:
    """A few bytes a second keep the kernel content (each is acknowledged) but never drain
    the response's buffer: the guard sees the writes paused for ``write_timeout``. (This
    needs the file sent through aiohttp's writer: ``loop.sendfile`` went past the guard.)"""
    guard = site.server.guard
    assert guard is not None
    reader, writer = await _request(site, rcvbuf=4096)
    try:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIMITS.write_timeout + 20
        while guard.open and loop.time() < deadline:
            if not await reader.read(512):
                break
            await asyncio.sleep(0.1)
        assert guard.open == 0
        assert guard.stats.shed["stalled_reader"] == 1
    finally:
        writer.close()
