"""A bare HTTP/1.1 server for the warm connection's tests: it answers exactly the bytes a
test scripts (odd framing, a close without an answer, headers the fake Kommo never sends)."""

from __future__ import annotations

import asyncio
from collections import deque

OK_204 = b"HTTP/1.1 204 No Content\r\n\r\n"


class ScriptedServer:
    """A bare HTTP/1.1 server: reads each request and plays the next scripted reply (bytes
    to write, then whether to close); a reply of None closes without answering. Once the
    script runs out, it answers 204."""

    def __init__(self, *script: tuple[bytes | None, bool]) -> None:
        self.script = deque(script)
        self.requests: list[bytes] = []
        #: Each request's line and headers, as received.
        self.heads: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.heads.append(head)
                self.requests.append(body)
                reply, close = self.script.popleft() if self.script else (OK_204, False)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
                if reply is None or close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
