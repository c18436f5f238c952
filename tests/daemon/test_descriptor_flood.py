"""1,100 idle connections to the local endpoint of a daemon started with systemd's default
soft limit of 1,024 descriptors (issue 18, point 8): calls are still notified, AMI reconnects,
/healthz answers, and the log does not flood. In a process of its own, under ``prlimit``."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sys
from pathlib import Path

import pytest
from test_reload import Lines

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import temp_journal, wait_for

IDLE = 1100
SOFT = 1024
UNKNOWN = "13125550100"
#: What the flood may cost in warning/error lines (folded lines, a reconnect): a handful.
MAX_COMPLAINTS = 20


def config(path: Path, ami: FakeAmiServer, kommo: FakeKommo) -> None:
    path.write_text(
        f'[ami]\nport = {ami.port}\nusername = "{DEMO_USERNAME}"\nsecret = "{DEMO_SECRET}"\n'
        "reconnect_min = 0.05\nreconnect_max = 0.5\n"
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        '[notify]\nto = ["did"]\nfallback = "none"\n[notify.dids]\n"5551000" = [7]\n'
        f'[journal]\ndatabase = "{temp_journal()}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\n'
        "[daemon]\nshutdown_timeout = 1.0\n"
    )


async def connect_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that never send a byte (those the daemon takes, at least: a
    daemon out of descriptors stops accepting, and the kernel's backlog fills)."""
    writers: list[asyncio.StreamWriter] = []
    failures = 0
    while len(writers) < count and failures < 20:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
        except (OSError, TimeoutError):
            failures += 1
            continue
        writers.append(writer)
    return writers


async def healthz(port: int) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def healthy(port: int, timeout: float = 10.0) -> bytes:
    """/healthz until it says 200: ``ami.connected`` is logged before the session's filters
    are set, and only then is the link counted connected (seconds on a loaded machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    answer = await healthz(port)
    while not answer.startswith(b"HTTP/1.1 200 ") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        answer = await healthz(port)
    return answer


@pytest.mark.parametrize("hard", ["systemd", "same"], ids=["soft-1024-hard-high", "hard-1024"])
async def test_1100_idle_connections_leave_calls_ami_and_healthz_working(
    tmp_path: Path, ami: FakeAmiServer, hard: str
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) sets the daemon's descriptor limit")
    soft, ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    if ours != resource.RLIM_INFINITY and ours < IDLE + 600:
        pytest.skip(f"this test process may open only {ours} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (ours, ours))  # the flood's own sockets
    limit = f"{SOFT}:{SOFT}" if hard == "same" else f"{SOFT}:{min(ours, 1 << 20)}"
    path = tmp_path / "config.toml"
    writers: list[asyncio.StreamWriter] = []
    try:
        async with FakeKommo(demo_dataset()) as kommo:
            config(path, ami, kommo)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop("KOMMO_CALLERID_CONFIG", None)
            proc = await asyncio.create_subprocess_exec(
                "prlimit", f"--nofile={limit}", "--",
                sys.executable, "-m", "kommo_callerid", "run", "-c", str(path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            try:
                port = int((await lines.until("http.listening", timeout=20))["port"])
                await lines.until("ami.connected", timeout=20)  # the daemon's view: /healthz
                writers = await connect_idle(port, IDLE)

                answer = await healthy(port)
                assert answer.startswith(b"HTTP/1.1 200 "), answer[-300:]
                ami.drop()  # AMI must get a descriptor to log in again
                await ami.wait_logged_in(2, timeout=15)
                await lines.until("ami.connected", timeout=15)
                call = CallScenarios().inbound(UNKNOWN, did="5551000", agents=())
                await ami.play(call.events)
                await wait_for(lambda: len(kommo.events) == 1, 15)
                answer = await healthy(port)
                assert answer.startswith(b"HTTP/1.1 200 "), answer[-300:]
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    await lines.until("daemon.stopped", timeout=15)
                    await asyncio.wait_for(proc.wait(), 10)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
    finally:
        for writer in writers:
            writer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, ours))
    assert proc.returncode == 0
    complaints = [line for line in lines.seen if line["level"] in ("warning", "error")]
    assert len(complaints) <= MAX_COMPLAINTS, complaints[:5]
    assert not any("Too many open files" in str(line) for line in lines.seen)
