"""A private redis-server process: a free loopback port, its own directory, no persistence.

Used by the cluster tests' fixture and by the cluster benchmark.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections import Counter
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


class Monitor:
    """The commands clients send (round trips, not the commands scripts run inside Redis),
    by second and by name (``evalsha:`` and the script's SHA1 prefix for a script), read from
    MONITOR while ``async with`` lasts."""

    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self.per_second: Counter[int] = Counter()
        self.by_name: Counter[str] = Counter()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        # a tick's script call names a thousand keys: lines far beyond the default 64 KiB
        reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self._server.port, limit=2**24
        )
        if self._server.password:
            self._writer.write(f"AUTH {self._server.password}\r\n".encode())
            await reader.readline()
        self._writer.write(b"MONITOR\r\n")
        assert await reader.readline() == b"+OK\r\n"
        self._reader = asyncio.create_task(self._read(reader), name="redis-monitor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None and self._writer is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._writer.close()
        await self._writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # +1764601234.567890 [0 127.0.0.1:51234] "evalsha" "..." ...
        while line := await reader.readline():
            stamp, _, source, command = line.split(b" ", 3)
            if source == b"lua]":
                continue  # run by a script, inside the client's one call
            words = command.split(b" ", 2)
            name = words[0].strip(b'"\r\n').decode().lower()
            if name == "evalsha":  # the script by its SHA's first 8 digits
                name += ":" + words[1].strip(b'"').decode()[:8]
            second = int(float(stamp[1:]))
            self.per_second[second] += 1
            self.by_name[name] += 1

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def busiest_second(self) -> int:
        """The most commands clients sent in one wall-clock second."""
        return max(self.per_second.values(), default=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
