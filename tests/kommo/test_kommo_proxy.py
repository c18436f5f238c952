"""Kommo requests through an http proxy: ``[kommo] proxy`` (credentials in the URL or the
``kommo_proxy`` credential file), else ``HTTP(S)_PROXY`` / ``NO_PROXY``; and ``check`` naming
the proxy and telling a dead proxy from one that wants credentials. A tiny forwarding proxy
on loopback stands between the client and the fake Kommo (plain http, so no CONNECT)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import pytest

from kommo_callerid.commands.check_kommo import check_kommo
from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import ACCOUNT_PATH, FakeKommo, demo_dataset

from support import make_config, refused_port

PASSWORD = "pr0xy-Pa55word"
AUTH = "Basic " + base64.b64encode(f"agent:{PASSWORD}".encode()).decode()
HOP_BY_HOP = ("proxy-authorization", "proxy-connection", "connection", "keep-alive")


class ForwardingProxy:
    """An HTTP/1.1 proxy for absolute-form requests: it notes each request line and its
    Proxy-Authorization, answers 407 when ``require`` is set and not met, and forwards the
    request (``Connection: close``) to the origin, piping the answer back."""

    def __init__(self, require: str | None = None) -> None:
        self.require = require
        self.seen: list[tuple[str, str | None]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        headers = [line.split(": ", 1) for line in header_lines if line]
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        self.seen.append((request_line, auth))
        if self.require is not None and auth != self.require:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
            writer.write(b"Proxy-Authenticate: Basic realm=test\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        method, target, version = request_line.split(" ")
        url = urlsplit(target)
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
        kept = [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
        path = url.path + (f"?{url.query}" if url.query else "")
        forwarded = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
        up_writer.write(forwarded.encode("latin-1") + b"\r\n\r\n")
        body = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        if body:
            up_writer.write(await reader.readexactly(body))
        writer.write(await up_reader.read())  # the origin closes after its answer
        await writer.drain()
        up_writer.close()
        with contextlib.suppress(OSError):
            await up_writer.wait_closed()


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardingProxy]:
    async with ForwardingProxy(require=AUTH) as server:
        yield server


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _config(ami: FakeAmiServer, kommo: FakeKommo, proxy: str = "") -> Config:
    return make_config(ami, kommo, kommo={"proxy": proxy, "timeout": 1.0})


async def _account_name(config: Config) -> str:
    async with KommoClient(config.kommo, config.cache) as client:
        return (await client.account()).name


async def _check(config: Config) -> str:
    out = io.StringIO()
    await check_kommo(config, Report(out, colour=False))
    return out.getvalue()


async def test_the_configured_proxy_carries_every_request_with_its_credentials(
    ami: FakeAmiServer, kommo: FakeKommo, proxy: ForwardingProxy
) -> None:
    config = _config(ami, kommo, f"http://agent:{PASSWORD}@127.0.0.1:{proxy.port}")
    assert await _account_name(config)
    assert proxy.seen == [(f"GET {kommo.base_url}{ACCOUNT_PATH} HTTP/1.1", AUTH)]


async def test_the_proxy_credentials_may_come_from_a_credential_file(
    ami: FakeAmiServer,
    kommo: FakeKommo,
    proxy: ForwardingProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "kommo_proxy").write_text(f"http://agent:{PASSWORD}@127.0.0.1:{proxy.port}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = _config(ami, kommo, f"http://127.0.0.1:{proxy.port}")  # the file wins
    assert await _account_name(config)
    assert [auth for _, auth in proxy.seen] == [AUTH]


async def test_with_the_key_empty_the_environment_proxy_and_no_proxy_apply(
    ami: FakeAmiServer, kommo: FakeKommo, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://agent:{PASSWORD}@127.0.0.1:{proxy.port}")
    config = _config(ami, kommo)
    assert await _account_name(config)
    assert len(proxy.seen) == 1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await _account_name(config)
    assert len(proxy.seen) == 1


async def test_check_names_the_proxy_and_hides_its_password(
    ami: FakeAmiServer, kommo: FakeKommo, proxy: ForwardingProxy
) -> None:
    said = await _check(_config(ami, kommo, f"http://agent:{PASSWORD}@127.0.0.1:{proxy.port}"))
    assert (
        f"OK   Kommo: through the proxy http://agent:***@127.0.0.1:{proxy.port} "
        "(from [kommo] proxy); it answered"
    ) in said
    assert PASSWORD not in said


async def test_check_tells_a_proxy_that_wants_credentials(
    ami: FakeAmiServer, kommo: FakeKommo, proxy: ForwardingProxy
) -> None:
    said = await _check(_config(ami, kommo, f"http://127.0.0.1:{proxy.port}"))
    assert "wants credentials (HTTP 407)" in said
    assert "credential file kommo_proxy" in said


async def test_check_tells_a_proxy_that_does_not_answer(
    ami: FakeAmiServer, kommo: FakeKommo, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_port() as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        said = await _check(_config(ami, kommo))
    assert f"FAIL Kommo: the proxy http://127.0.0.1:{port} (from HTTP_PROXY) did not answer" in said
    assert "check HTTP_PROXY" in said
