"""The public listener under hostile clients: slowloris, stalled handshakes, a renewed
certificate read on SIGHUP. Real sockets, real TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click_setup import ORIGINATOR, click_config, client_tls, post_click, self_signed
from click_tokens import token
from structlog.testing import capture_logs

from kommo_callerid.core.config import PublicConfig
from kommo_callerid.public.server import PublicServer
from kommo_callerid.serving.guard import ConnectionLimits
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, running_daemon, wait_for

SLOW_CLIENTS = 1000


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def small_server(tmp_path: Path) -> AsyncIterator[PublicServer]:
    cert, key = self_signed(tmp_path)
    config = PublicConfig(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
    limits = ConnectionLimits(max_connections=20, max_per_client=10, request_timeout=0.3)
    server = PublicServer(config, frozenset, limits=limits)
    server.add_route("GET", "/hello", _hello)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1024):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_a_stalled_handshake_is_dropped(small_server: PublicServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", small_server.port)
    assert await _closed_within(reader, 3.0)
    writer.close()
    assert small_server.guard is not None and small_server.guard.open == 0


async def test_a_trickled_request_head_is_dropped() -> None:
    server = PublicServer(
        PublicConfig(listen="127.0.0.1:0"),
        frozenset,
        limits=ConnectionLimits(request_timeout=0.3),
    )
    server.add_route("GET", "/hello", _hello)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        assert await _closed_within(reader, 3.0)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in await reader.read(1024)  # a whole head in time is served
        writer.close()
    finally:
        await server.stop()


async def test_beyond_the_caps_the_longest_waiting_connections_make_room(
    small_server: PublicServer,
) -> None:
    """Counted at accept, before any TLS work: the 11th connection from one address (none
    of them finished a handshake) closes the oldest, so the newest 10 are held."""
    held = [await asyncio.open_connection("127.0.0.1", small_server.port) for _ in range(30)]
    guard = small_server.guard
    assert guard is not None
    await wait_for(lambda: guard.stats.accepted >= 30)
    assert guard.open == 10 and guard.stats.shed["evicted"] == 20  # one client: max_per_client
    oldest = await asyncio.gather(*(_closed_within(reader, 3.0) for reader, _ in held[:20]))
    assert all(oldest)
    for _, writer in held:
        writer.close()
    await wait_for(lambda: guard.open == 0)


async def test_when_every_connection_is_busy_a_tls_newcomer_is_closed(tmp_path: Path) -> None:
    """No room and nothing to evict: the newcomer is closed before any TLS work (no clear
    text 503 into a TLS stream); the busy ones finish."""
    cert, key = self_signed(tmp_path)
    config = PublicConfig(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
    server = PublicServer(
        config, frozenset, limits=ConnectionLimits(max_connections=2, max_per_client=2)
    )
    release, waiting = asyncio.Event(), []

    async def wait(request: web.Request) -> web.Response:
        waiting.append(request)
        await release.wait()
        return web.json_response({"ok": True})

    server.add_route("GET", "/wait", wait)
    await server.start()
    guard = server.guard
    assert guard is not None
    url = f"https://127.0.0.1:{server.port}/wait"
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_tls(cert), force_close=True)
        ) as session:

            async def get() -> int:
                async with session.get(url) as response:
                    return response.status

            busy = [asyncio.create_task(get()) for _ in range(2)]
            await wait_for(lambda: len(waiting) == 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await reader.read() == b""  # closed at once, not a byte written
            writer.close()
            assert guard.stats.shed["full"] == 1 and guard.stats.shed["evicted"] == 0
            release.set()
            assert await asyncio.gather(*busy) == [200, 200]
    finally:
        release.set()
        await server.stop()


async def test_a_renewed_certificate_serves_the_next_connection(
    small_server: PublicServer, tmp_path: Path
) -> None:
    config = small_server._config
    new_cert, new_key = self_signed(tmp_path / "..", "renewed")

    async def served() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", small_server.port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    before = await served()
    shutil.copy(new_cert, config.tls_cert)  # certbot renews in place
    shutil.copy(new_key, config.tls_key)
    with capture_logs() as logs:
        small_server.reconfigure(config)
        after = await served()
        assert after != before
        await asyncio.to_thread(Path(config.tls_key).write_text, "half-written")
        small_server.reconfigure(config)
        assert await served() == after  # a broken renewal keeps the running certificate
    assert [line["event"] for line in logs] == ["public.tls_reloaded", "public.tls_reload_failed"]


async def test_a_thousand_slow_clients_neither_grow_it_nor_stop_caller_id(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo() as kommo:
        config = click_config(ami, kommo, cert, key, http={"listen": "127.0.0.1:0"})
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                await wait_for(lambda: bool(events(logs, "clicktocall.account")))
                public = daemon._running.public if daemon._running else None
                assert public is not None and public.server.guard is not None
                guard = public.server.guard
                port = daemon.public_port
                slow = []
                for _ in range(SLOW_CLIENTS):  # each sends half a TLS record, then nothing
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"\x16\x03\x01\x02\x00\x01")
                    slow.append(writer)
                await wait_for(lambda: guard.stats.accepted >= SLOW_CLIENTS, 20.0)
                assert guard.open <= guard.limits.max_per_client
                call = CallScenarios().inbound()
                await ami.play(call.events)
                await wait_for(lambda: len(kommo.events) >= 1, 10.0)  # caller ID goes on
                for writer in slow:
                    writer.close()
                await wait_for(lambda: guard.open == 0, 10.0)
                connector = aiohttp.TCPConnector(ssl=client_tls(cert))
                async with aiohttp.ClientSession(connector=connector) as session:
                    url = f"https://127.0.0.1:{port}"
                    assert (await post_click(session, url, token()))[0] == 202
                    metrics = f"http://127.0.0.1:{daemon.http_port}/metrics"
                    async with session.get(metrics) as response:
                        text = await response.text()
                shed = _series(text, "kommo_callerid_http_connections_shed_total")
                evicted = SLOW_CLIENTS - guard.limits.max_per_client
                assert shed['listener="public",reason="evicted"'] >= evicted
                assert shed['listener="http",reason="evicted"'] == 0  # the local one is there
                assert 'kommo_callerid_http_client_errors_total{listener="public"}' in text


def _series(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in a Prometheus text page."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].split("} ")
            found[labels] = float(value)
    return found
