"""The notification's warm connection over real TLS (Kommo is always https): a self-signed
certificate made here, trusted through SSL_CERT_FILE (what ``ssl.create_default_context``
reads), so both ways out use the system trust store as in production. Notifications go out on
one reused TLS connection, a server-side close is recovered, and a certificate for another
name is refused by the warm connection exactly as by aiohttp: nothing is sent insecurely."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import (
    CallDirection,
    CallStatus,
    JournalCall,
    JournalVerdict,
    NotifyOutcome,
)
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.fastpost import FastPost
from kommo_callerid.kommo.journal_api import KommoJournal
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo, demo_dataset

from support import wait_for

JOHN = "18305803077"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _certificate(directory: Path, san: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", "/CN=kommo-test", "-addext", f"subjectAltName={san}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsKommo(FakeKommo):
    """The fake Kommo over TLS, remembering each request's connection (the server's side)."""

    def __init__(self, cert: Path, key: Path) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        super().__init__(demo_dataset(), ssl_context=context)
        self.connections: list[asyncio.BaseTransport] = []

    def make_app(self) -> web.Application:
        app = super().make_app()

        @web.middleware
        async def track(request: web.Request, handler: _Handler) -> web.StreamResponse:
            transport = request.transport
            if transport is not None and transport not in self.connections:
                self.connections.append(transport)
            return await handler(request)

        app.middlewares.append(track)
        return app


def _trusting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, san: str) -> TlsKommo:
    cert, key = _certificate(tmp_path, san)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the one CA the client trusts
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return TlsKommo(cert, key)


def _client(kommo: FakeKommo) -> KommoClient:
    assert kommo.base_url.startswith("https://127.0.0.1:")
    config = KommoConfig(base_url=kommo.base_url, access_token=SecretStr(kommo.token))
    return KommoClient(config, CacheConfig())


def _fast(client: KommoClient) -> FastPost:
    fast = client.transport.fast
    assert fast is not None
    return fast


async def test_notifications_go_out_on_one_warm_tls_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with _trusting(monkeypatch, tmp_path, "IP:127.0.0.1") as kommo, _client(kommo) as client:
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT  # aiohttp
        fast = _fast(client)
        await wait_for(lambda: fast.ready)
        before = len(kommo.connections)
        for _ in range(10):
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 10
        assert len(kommo.connections) == before + 1  # the ten shared one TLS connection

        # the server closes it (its keep-alive timeout): another one (a spare) is used
        warm = fast._idle[-1]  # the last used is the next taken
        kommo.connections[-1].close()
        await wait_for(lambda: fast.ready and warm not in fast._idle)
        for _ in range(3):
            assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        assert fast.sent == 13
        assert len(kommo.connections) == before + 2
    assert len(kommo.events) == 14
    assert all(record.status == 200 for record in kommo.requests)


async def test_a_certificate_for_another_name_is_refused_by_both_ways_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # trusted CA, valid certificate, but for kommo.example, not 127.0.0.1
    kommo = _trusting(monkeypatch, tmp_path, "DNS:kommo.example")
    async with kommo, _client(kommo) as client:
        fast = _fast(client)
        with capture_logs() as logs:
            outcome = await client.notify(JOHN, [1], within=1.5)
        assert outcome is NotifyOutcome.DROPPED_TTL
        fast.want()
        await wait_for(lambda: fast._failures >= 1)  # the warm connection's handshake failed
        assert not fast.ready
        assert fast.sent == 0
    assert kommo.events == [] and kommo.requests_to(EVENTS_PATH) == 0
    details = " ".join(str(line.get("detail", "")) for line in logs)
    assert "certificate" in details.lower()  # aiohttp refused it the same way


async def test_the_warm_connection_alone_checks_the_host_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # FastPost without the transport: its own default context verifies too
    kommo = _trusting(monkeypatch, tmp_path, "DNS:kommo.example")
    async with kommo:
        fast = FastPost(kommo.base_url, "test", max_body=1024)
        try:
            fast.want()
            await wait_for(lambda: fast._failures >= 1)
            assert not fast.ready
        finally:
            await fast.close()
    assert kommo.requests == []


async def test_lookups_and_journal_posts_go_out_on_the_warm_tls_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with _trusting(monkeypatch, tmp_path, "IP:127.0.0.1") as kommo, _client(kommo) as client:
        assert await client.notify(JOHN, [1], within=5) is NotifyOutcome.SENT  # aiohttp
        fast = _fast(client)
        await wait_for(lambda: fast.ready)
        found = await client.lookup(JOHN)
        journal = KommoJournal(client.transport, timeout=5, rate_limit=7)
        call = JournalCall(
            "9.1", CallDirection.INBOUND, JOHN, 5, CallStatus.ANSWERED, "", None, 1_780_000_000,
            "", "kommo-callerid",
        )  # fmt: skip
        [answer] = await journal.add_calls([call])
        assert fast.sent == 2
    assert found.entity is not None and found.entity.id == 1001
    assert answer.verdict is JournalVerdict.ATTACHED
    assert kommo.journal.uniqs() == ["9.1"]
    assert all(200 <= record.status < 300 for record in kommo.requests)
