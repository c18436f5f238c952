"""Recordings: a 50 MB recording served over TLS to 20 concurrent ``Range`` requests (each a
different 2.5 MB slice, several rounds): the serving process's RSS stays flat (the file is
streamed by aiohttp's ``FileResponse``, never read whole) and the first byte's p50/p99.

The server runs in a child process of its own (``--serve``), so its RSS is its alone; the
clients run here.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import aiohttp
from common import Report, percentile

SIZE = 50 * 1024 * 1024
CONCURRENT = 20
KEY = b"bench-signing-key-0123456789abcdef"
UID = "1704190500.10"
DAY = date(2024, 1, 2)
DAEMON = str(Path(__file__).resolve().parents[2] / "daemon")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _serve(directory: str, cert: str, cert_key: str) -> None:
    """The child: the recording routes over TLS; prints the port, runs until stdin closes."""
    from aiohttp import web

    from kommo_callerid.core.config import RecordingsConfig
    from kommo_callerid.recordings.serve import RecordingServer, recording_routes

    async def main() -> None:
        server = RecordingServer(RecordingsConfig(directory=Path(directory)), KEY)
        app = web.Application()
        app.add_routes(recording_routes(server))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, cert_key)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


async def run(report: Report, quick: bool) -> None:
    from kommo_callerid.recordings.token import Claim, sign

    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="kommo-callerid-bench-rec-") as temp:
        root = Path(temp)
        folder = root / "monitor" / "2024" / "01" / "02"
        folder.mkdir(parents=True)
        chunk = os.urandom(1024 * 1024)
        with (folder / f"in-5551000-18305803077-20240102-101500-{UID}.wav").open("wb") as out:
            for _ in range(SIZE // len(chunk)):
                out.write(chunk)
        cert, cert_key = root / "cert.pem", root / "key.pem"
        subprocess.run(  # noqa: ASYNC221
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
                str(cert_key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        child = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, __file__, "--serve", str(root / "monitor"), str(cert), str(cert_key)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": DAEMON},
        )
        try:
            assert child.stdout is not None
            port = int(await asyncio.to_thread(child.stdout.readline))
            url = f"https://127.0.0.1:{port}/recordings/{sign(KEY, Claim(UID, DAY, 0))}"
            client_ssl = ssl.create_default_context(cafile=str(cert))
            first_bytes, peak = [], 0
            async with aiohttp.ClientSession() as session:
                await _fetch(session, url, client_ssl, 0)  # warm up (imports, TLS)
                baseline = _rss_kib(child.pid)
                for _ in range(rounds):
                    fetches = [
                        asyncio.create_task(_fetch(session, url, client_ssl, n))
                        for n in range(CONCURRENT)
                    ]
                    while not all(f.done() for f in fetches):
                        peak = max(peak, _rss_kib(child.pid))
                        await asyncio.sleep(0.02)
                    first_bytes += [f.result() for f in fetches]
            growth = (peak - baseline) / 1024
            report.add(
                f"recordings: RSS growth serving a 50 MB file, {CONCURRENT} concurrent Range "
                f"requests x {rounds} rounds",
                f"{growth:.1f} MiB (baseline {baseline / 1024:.1f} MiB)",
                "< 25 MiB (streamed)",
                growth < 25,
            )
            ms = [s * 1000 for s in first_bytes]
            report.add(
                "recordings: first byte of a Range answer over TLS, p50 / p99",
                f"{percentile(ms, 0.5):.1f} / {percentile(ms, 0.99):.1f} ms",
            )
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)


async def _fetch(
    session: aiohttp.ClientSession, url: str, context: ssl.SSLContext, n: int
) -> float:
    """One Range request for the n-th 2.5 MB slice; seconds to its first body byte."""
    span = SIZE // CONCURRENT
    headers = {"Range": f"bytes={n * span}-{(n + 1) * span - 1}"}
    started = time.perf_counter()
    async with session.get(url, headers=headers, ssl=context) as answer:
        assert answer.status == 206, answer.status
        await answer.content.readany()
        first = time.perf_counter() - started
        received = 1
        async for data in answer.content.iter_chunked(256 * 1024):
            received += len(data)
    return first


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(*sys.argv[2:5])
