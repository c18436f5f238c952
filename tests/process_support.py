"""``kommo-callerid run`` in a process of its own, for the tests that kill it or start two: its
JSON log lines are copied from a pipe to a file as they come (the pipe never fills up, and a
``prlimit --fsize=0`` daemon can still log), ``/healthz`` is read over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import wait_for


def process_config(
    folder: Path, ami: FakeAmiServer, kommo: FakeKommo, database: Path, *, name: str = "cfg"
) -> Path:
    """A config with the journal at ``database``, /healthz on a free port, a 2 s stop."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'[ami]\nport = {ami.port}\nusername = "{DEMO_USERNAME}"\nsecret = "{DEMO_SECRET}"\n'
        "reconnect_min = 0.05\nreconnect_max = 0.2\n"
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        f'[log]\nformat = "json"\n[journal]\ndatabase = "{database}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[daemon]\nshutdown_timeout = 2.0\n'
    )
    return path


class DaemonProcess:
    def __init__(self, config: Path, log: Path, *wrapper: str) -> None:
        self.config = config
        self.log = log
        self.wrapper = wrapper
        self.proc: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._copying: asyncio.Task[None] | None = None

    async def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KOMMO_CALLERID_CONFIG", None)
        command = [*self.wrapper, sys.executable, "-m", "kommo_callerid", "run"]
        self.log.write_bytes(b"")
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self._copying = asyncio.create_task(self._copy(self.proc))
        return self

    async def _copy(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with self.log.open("ab") as out:
            async for line in proc.stdout:
                out.write(line)
                out.flush()

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and "event" in parsed:
                found.append(parsed)
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == name]

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.returncode

    async def port(self) -> int:
        if self._port is None:
            await wait_for(lambda: bool(self.events("http.listening")) or self.exited, 20)
            assert not self.exited, self.log.read_text()
            self._port = int(self.events("http.listening")[0]["port"])
        return self._port

    @property
    def exited(self) -> bool:
        assert self.proc is not None
        return self.proc.returncode is not None

    async def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{await self.port()}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url) as answer:
            return answer.status, await answer.json()

    async def wait_health(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll /healthz until ``condition`` holds for its body; that body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            _, body = await self.health()
            if condition(body):
                return body
            if loop.time() > deadline:
                raise AssertionError(f"/healthz never satisfied the condition: {body}")
            await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit; the exit code (negative: killed by a signal)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait_exit(timeout)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        """The exit code, once the process has ended and its last line is in the file."""
        assert self.proc is not None and self._copying is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._copying, timeout)
        return code
