"""The latency floor: what any Python process pays on this machine between the fake AMI server
and the fake Kommo, measured with the least a caller-ID forwarder can do.

``forward``: a raw asyncio protocol logs in, splits the stream at blank lines, and for a root
``Newchannel`` (Uniqueid = Linkedid) writes one prebuilt notification POST on a warm keep-alive
connection: no decision, no lookup, no journal, no log line. With ``floor_lookup`` in the
config it first asks Kommo's by_phone search on a second keep-alive connection and posts
when the whole answer is in (the cold path's floor: two round trips). ``rtt`` (child.py):
the round trip from a process of its own (the daemon's case: the fake Kommo answers from another
process, so every hop crosses processes, which costs more than the in-process RTT the targets
use as their unit). Run by ``child.py floor CONFIG_JSON`` (``rtt URL`` on its stdin).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

_END = b"\r\n\r\n"


class _Forwarder(asyncio.Protocol):
    def __init__(self, post: Any) -> None:
        self._buffer = b""
        self._post = post
        self.logged_in = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *messages, self._buffer = self._buffer.split(_END)
        for message in messages:
            if b"Response: Success" in message and not self.logged_in.done():
                self.logged_in.set_result(None)
            elif b"Event: Newchannel\r\n" in message:
                fields = dict(
                    line.split(b": ", 1) for line in message.split(b"\r\n") if b": " in line
                )
                if fields.get(b"Uniqueid") == fields.get(b"Linkedid"):
                    self._post(fields.get(b"CallerIDNum", b"").decode())


class _Answers(asyncio.Protocol):
    """The lookups' connection: each whole answer (its head and Content-Length body) posts
    the number asked, in order (a keep-alive connection answers in order)."""

    def __init__(self, post: Callable[[str], None]) -> None:
        self._buffer = b""
        self._post = post
        self.asked: deque[str] = deque()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (head_end := self._buffer.find(_END)) >= 0:
            length = 0
            for line in self._buffer[:head_end].split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            end = head_end + len(_END) + length
            if len(self._buffer) < end:
                return
            self._buffer = self._buffer[end:]
            if self.asked:
                self._post(self.asked.popleft())


class _Discard(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:  # the answers: read and dropped
        pass


async def forward(config: dict[str, Any], ready: Any) -> None:
    loop = asyncio.get_running_loop()
    kommo = urlsplit(config["kommo"]["base_url"])
    token = config["kommo"]["access_token"]
    http, _ = await loop.create_connection(_Discard, kommo.hostname, kommo.port)

    def post(number: str) -> None:
        body = json.dumps({"add": [{"type": "phone_call", "phone_number": number}]}).encode()
        head = (
            f"POST /api/v2/events HTTP/1.1\r\nHost: {kommo.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        http.write(head.encode() + body)

    on_root = post
    if config.get("floor_lookup"):
        answers = _Answers(post)
        lookups, _ = await loop.create_connection(lambda: answers, kommo.hostname, kommo.port)

        def ask(number: str) -> None:
            answers.asked.append(number)
            lookups.write(
                f"GET /api/v2/search/by_phone?phone={number} HTTP/1.1\r\nHost: {kommo.netloc}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )

        on_root = ask
    ami = config["ami"]
    transport, protocol = await loop.create_connection(
        lambda: _Forwarder(on_root), "127.0.0.1", ami["port"]
    )
    login = f"Action: Login\r\nUsername: {ami['username']}\r\nSecret: {ami['secret']}\r\n\r\n"
    transport.write(login.encode())
    await protocol.logged_in
    await ready()
