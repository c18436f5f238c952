"""Helpers for the recordings tests: a FreePBX-like monitor directory, a self-signed TLS
certificate (the ``openssl`` command), and the recording routes served over TLS by a minimal
aiohttp app on a thread of its own, so plain blocking clients (``http.client``) can send any
raw request line, and hypothesis can drive them.

The public listener mounts the same routes (``recording_routes``) in the daemon.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.serve import RecordingServer, recording_routes

T = TypeVar("T")


def freepbx_name(
    uniqueid: str,
    when: datetime,
    *,
    kind: str = "in",
    to: str = "5551000",
    caller: str = "18305803077",
    ext: str = "wav",
) -> str:
    """``in-TO-FROM-YYYYMMDD-HHMMSS-UNIQUEID.wav``, as FreePBX names a recording."""
    return f"{kind}-{to}-{caller}-{when:%Y%m%d-%H%M%S}-{uniqueid}.{ext}"


def lay_out(directory: Path, uniqueid: str, when: datetime, data: bytes, **name: str) -> Path:
    """A recording filed as FreePBX files it: ``yyyy/mm/dd/in-TO-FROM-...-UNIQUEID.wav``."""
    folder = directory / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / freepbx_name(uniqueid, when, **name)
    path.write_bytes(data)
    return path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


class TlsRecordingSite:
    """The recording routes over TLS on 127.0.0.1, served from a thread with its own loop."""

    def __init__(
        self,
        config: RecordingsConfig,
        key: bytes,
        cert: Path,
        cert_key: Path,
        clock: Clock,
        max_downloads: int = 32,
    ) -> None:
        self.config, self.key, self.clock = config, key, clock
        self._cert, self._cert_key = cert, cert_key
        self._max_downloads = max_downloads
        self.port = 0
        self.server: RecordingServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> TlsRecordingSite:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        self.server = RecordingServer(
            self.config, self.key, clock=self.clock, max_downloads=self._max_downloads
        )
        app = web.Application()
        app.add_routes(recording_routes(self.server))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._cert_key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self._cert))

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with ``path`` sent exactly as given (no normalising client)."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.client_context(), timeout=30
        )
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()


@contextmanager
def tls_site(
    config: RecordingsConfig, key: bytes, certs: tuple[Path, Path], clock: Clock, **options: int
) -> Iterator[TlsRecordingSite]:
    with TlsRecordingSite(config, key, *certs, clock, **options) as site:
        yield site
