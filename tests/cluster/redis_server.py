"""A private redis-server process: a free loopback port, its own directory, no persistence.

Used by the cluster tests' fixture and by the cluster benchmark.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

from redis import asyncio as aioredis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: Path, password: str = "") -> None:
        self.directory = directory
        self.password = password
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(  # noqa: ASYNC220  (starts at once; we poll below)
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = aioredis.Redis(port=self.port, password=self.password or None)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.02)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        await asyncio.to_thread(process.wait, 5)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(port=self.port, password=self.password or None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
