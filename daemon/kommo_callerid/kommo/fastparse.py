"""The warm connection's HTTP/1.1 answer parser (:mod:`kommo_callerid.kommo.fastpost`).

Pure: bytes in, :class:`FastAnswer` out. It reads a length-delimited, chunked or
read-to-close body up to a cap, drops interim (1xx) answers, and raises
:class:`UnreadableAnswer` for anything it will not vouch for (conflicting framing, an
upgrade, a head too long, a transfer coding it does not know): the request then goes the
ordinary (aiohttp) way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: The answer's head (status line and headers) may not be longer than this.
MAX_HEAD = 64 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class UnreadableAnswer(Exception):
    """The bytes on the connection are not an HTTP/1.1 answer this parser will vouch for."""


@dataclass(frozen=True, slots=True)
class FastAnswer:
    status: int
    #: The media type, lower case without parameters (what aiohttp's ``content_type`` says).
    content_type: str
    #: None: larger than the body cap, not read.
    body: bytes | None
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class Parsed:
    answer: FastAnswer
    #: The connection may carry another request.
    reusable: bool


def parse_response(buffer: bytearray, eof: bool, max_body: int) -> Parsed | None:
    """The answer at the start of ``buffer``, or None while more bytes are needed; raises
    :class:`UnreadableAnswer`. Interim (1xx) answers are dropped from the buffer."""
    head = _final_head(buffer)
    if head is None:
        return None
    status, version, headers, start = head
    connection = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    raw_type = headers.get("content-type")
    content_type = "application/octet-stream"
    if raw_type is not None:
        content_type = raw_type.split(";", 1)[0].strip().lower()
    retry_after = headers.get("retry-after")

    def answer(body: bytes | None, reusable: bool) -> Parsed:
        return Parsed(FastAnswer(status, content_type, body, retry_after), reusable)

    if status in (204, 304):
        return answer(b"", keep and len(buffer) == start)
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower().split(",")[-1].strip() != "chunked":
            raise UnreadableAnswer
        return _chunked(buffer, start, max_body, answer, keep)
    length_text = headers.get("content-length")
    if length_text is None:  # the body runs until the server closes the connection
        if len(buffer) - start > max_body:
            return answer(None, False)
        return answer(bytes(buffer[start:]), False) if eof else None
    if not length_text.isdigit():
        raise UnreadableAnswer
    length = int(length_text)
    if length > max_body:
        return answer(None, False)
    if len(buffer) - start < length:
        return None
    return answer(bytes(buffer[start : start + length]), keep and len(buffer) == start + length)


def _final_head(buffer: bytearray) -> tuple[int, str, dict[str, str], int] | None:
    """Status, version, headers and where the body starts, once the head is complete."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise UnreadableAnswer
            return None
        if end > MAX_HEAD:
            raise UnreadableAnswer
        status, version, headers = _head(bytes(buffer[:end]))
        if status >= 200:
            return status, version, headers, end + 4
        if status == 101:
            raise UnreadableAnswer
        del buffer[: end + 4]


def _head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
        raise UnreadableAnswer
    status = int(parts[1])
    if not 100 <= status <= 599:
        raise UnreadableAnswer
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise UnreadableAnswer
        key, value = name.lower(), value.strip()
        if key in ("content-length", "transfer-encoding") and headers.get(key, value) != value:
            raise UnreadableAnswer  # conflicting framing: never guess where the answer ends
        headers[key] = value
    if "content-length" in headers and "transfer-encoding" in headers:
        raise UnreadableAnswer
    return status, parts[0], headers


def _chunked(
    buffer: bytearray,
    start: int,
    max_body: int,
    answer: Callable[[bytes | None, bool], Parsed],
    reusable: bool,
) -> Parsed | None:
    # Spans, not copies: the answer is parsed again each time more of it arrives.
    spans: list[tuple[int, int]] = []
    size, pos = 0, start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            if len(buffer) - pos > MAX_HEAD:
                raise UnreadableAnswer
            return None
        size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
        if not size_text or not _HEX.issuperset(size_text):  # int() would take "0x1f"
            raise UnreadableAnswer
        count = int(size_text, 16)
        if count == 0:
            if buffer[line_end + 2 : line_end + 4] == b"\r\n":
                done = line_end + 4
            else:  # trailers: skipped
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                done = trailer_end + 4
            body = b"".join(buffer[begin:end] for begin, end in spans)
            return answer(body, reusable and len(buffer) == done)
        size += count
        if size > max_body:
            return answer(None, False)
        data_start = line_end + 2
        data_end = data_start + count
        if len(buffer) < data_end + 2:
            return None
        if buffer[data_end : data_end + 2] != b"\r\n":
            raise UnreadableAnswer
        spans.append((data_start, data_end))
        pos = data_end + 2
