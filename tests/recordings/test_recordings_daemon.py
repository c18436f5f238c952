"""Recordings through the whole daemon: ``[public]`` over TLS (a self-signed certificate),
``[recordings]`` and ``[journal]``, the fake AMI and the fake Kommo.

A replayed queue call (Asterisk 22's ``07-inbound-queue``) whose file FreePBX named by the
agent's Local ``;2`` leg (not the Linkedid) reaches Kommo with a ``link``; ``GET`` on that
link through the daemon's public port gives the file (206 for a ``Range``), with CORS for the
Kommo page's origin; ``/recordings/`` and traversal attempts are 404.

And one clock: a daemon started while the wall clock was a day behind (NTP corrected it
since) still gives a file that appears a moment after the hangup its grace. Before, the
grace was judged by ``time.time`` against a ``recorded_at`` of the journal's steady clock,
so the record went at once, without its link.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from recordings_site import lay_out, self_signed
from structlog.testing import capture_logs

from kommo_callerid.core.config import Config
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import events_only, read_recording

from support import RECORDINGS, events, make_config, wait_for

QUEUE_CALL = RECORDINGS / "asterisk-22" / "07-inbound-queue-5552000.txt"
LINKEDID = "1795552762.29"
AGENT_LEG = "1795552762.31"  # Local/100@agents-0000000a;2: FreePBX's MixMonitor ran here
PAGE_ORIGIN = "https://crm.example.com"
AUDIO = bytes(range(256)) * 64  # 16 KiB
DAY = 86_400.0


def config(ami: FakeAmiServer, kommo: FakeKommo, tmp: Path, monitor: Path) -> Config:
    cert, key = self_signed(tmp)
    return make_config(
        ami,
        kommo,
        kommo={"token_file": str(tmp / "state" / "tokens.json")},
        public={
            "listen": "127.0.0.1:0",
            "url": "https://127.0.0.1",
            "tls_cert": str(cert),
            "tls_key": str(key),
            "origins": [PAGE_ORIGIN],
        },
        recordings={"directory": str(monitor)},
        journal={"database": str(tmp / "journal.sqlite3")},
    )


@asynccontextmanager
async def daemon_running(
    config: Config, wall_clock: Callable[[], float] = time.time
) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, wall_clock=wall_clock)
    serving = asyncio.create_task(daemon.serve())
    try:
        await wait_for(lambda: daemon.ami_connected or serving.done())
        assert not serving.done()
        yield daemon
    finally:
        daemon.stop.set()
        assert await serving == EXIT_OK


def lay_queue_file(monitor: Path, when: datetime, uniqueid: str = AGENT_LEG) -> Path:
    return lay_out(monitor, uniqueid, when, AUDIO, to="5552000", caller="18305803077")


def fetch(
    port: int, cert: Path, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as given (blocking: run it in a thread)."""
    context = ssl.create_default_context(cafile=str(cert))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
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


async def test_a_replayed_calls_link_is_served_by_the_daemons_public_port(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    lay_queue_file(monitor, datetime.now())  # MixMonitor writes while the call goes on
    lay_out(monitor, "1795552762.99", datetime.now(), b"another call's recording")
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        cfg = config(ami, kommo, tmp_path, monitor)
        async with daemon_running(cfg) as daemon:
            await ami.play(events_only(read_recording(QUEUE_CALL)))
            await wait_for(lambda: len(kommo.journal.calls) >= 1, 10)
            [sent] = kommo.journal.calls
            assert sent.uniq == LINKEDID
            link = sent.body["link"]
            assert link.startswith("https://127.0.0.1/recordings/")
            assert AGENT_LEG not in link and "/" not in link.removeprefix("https://127.0.0.1/")[11:]
            path = link.removeprefix("https://127.0.0.1")
            port, cert = daemon.public_port, Path(cfg.public.tls_cert)
            assert port is not None

            async def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
                return await asyncio.to_thread(fetch, port, cert, path, headers)

            status, headers, body = await get(path, Origin=PAGE_ORIGIN)
            assert (status, body) == (200, AUDIO)
            assert headers["content-type"] == "audio/wav"
            assert headers["access-control-allow-origin"] == PAGE_ORIGIN
            status, headers, body = await get(path, Origin=PAGE_ORIGIN, Range="bytes=100-199")
            assert (status, body) == (206, AUDIO[100:200])
            assert headers["content-range"] == f"bytes 100-199/{len(AUDIO)}"
            assert headers["access-control-allow-origin"] == PAGE_ORIGIN
            head = await asyncio.to_thread(fetch, port, cert, path, None, "HEAD")
            assert (head[0], head[2], head[1]["content-length"]) == (200, b"", str(len(AUDIO)))
            for probe in (
                "/recordings/",
                "/recordings",
                "/recordings/../recordings/",
                "/recordings/%2e%2e/%2e%2e/etc/passwd",
                "/recordings/..%2f..%2fetc%2fpasswd",
                f"/recordings/{monitor}/{datetime.now():%Y/%m/%d}",
                "/recordings/" + path.rsplit("/", 1)[1] + "/..",
            ):
                status, _, body = await get(probe)
                assert status == 404, probe
                assert AUDIO[:64] not in body


async def test_the_grace_holds_on_the_journals_clock_after_a_wall_clock_step(
    tmp_path: Path,
) -> None:
    behind = 1 * DAY  # the wall clock when the daemon started; NTP has corrected it since
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        cfg = config(ami, kommo, tmp_path, monitor)
        started_wall = time.time() - behind
        started_mono = time.monotonic()

        def wall() -> float:  # only at start-up behind: the journal's steady clock keeps it
            return started_wall + (time.monotonic() - started_mono)

        with capture_logs() as logs:
            async with daemon_running(cfg, wall_clock=wall) as daemon:
                assert daemon.recordings is not None
                daemon.recordings.links.grace = 2.0  # the test's patience, not the rule
                await ami.play(events_only(read_recording(QUEUE_CALL)))
                await wait_for(lambda: bool(events(logs, "journal.recorded")), 10)
                await asyncio.sleep(0.5)  # the first attempt found no file
                # MIXMON_POST, late; named by the Linkedid (as any version looked it up)
                lay_queue_file(monitor, datetime.fromtimestamp(wall()), LINKEDID)
                await wait_for(lambda: len(kommo.journal.calls) >= 1, 10)
    [sent] = kommo.journal.calls
    body: dict[str, Any] = sent.body
    assert body.get("link", "").startswith("https://127.0.0.1/recordings/"), body
