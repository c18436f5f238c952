"""The AMI wire format as plain header dicts: parse recorded streams, format messages.

A recorded stream is what an AMI client receives: an optional banner line
(``Asterisk Call Manager/X.Y.Z``), then messages of ``Key: value`` lines ending in CRLF,
each message closed by a blank line. The ``*.actions.txt`` files also carry ``;`` comment
lines, which are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

BANNER_PREFIX = "Asterisk Call Manager/"
EOL = "\r\n"

#: One AMI message: header name -> value, in the order the server sent them.
AmiMessage = dict[str, str]

# Asterisk always ends lines in CRLF; a bare LF is accepted so hand-written fixtures work.
# (str.splitlines would also split on \x1c, \u2028 and friends, which may sit inside a value.)
_LINE_BREAK = re.compile(r"\r?\n")


def parse_ami_stream(data: bytes | str) -> list[AmiMessage]:
    """Every message in a recorded stream, in order; the banner and comments are skipped.

    A header repeated within one message keeps its first value.
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    messages: list[AmiMessage] = []
    current: AmiMessage = {}
    for line in _LINE_BREAK.split(text):
        if not line:
            if current:
                messages.append(current)
                current = {}
        elif not current and (line.startswith(BANNER_PREFIX) or line.startswith(";")):
            continue
        else:
            key, sep, value = line.partition(":")
            if sep:
                current.setdefault(key, value.removeprefix(" "))
    if current:
        messages.append(current)
    return messages


def read_recording(path: str | PathLike[str]) -> list[AmiMessage]:
    """The messages of a recording file (see :func:`parse_ami_stream`)."""
    return parse_ami_stream(Path(path).read_bytes())


def events_only(
    messages: Iterable[Mapping[str, str]], names: Iterable[str] | None = None
) -> list[AmiMessage]:
    """The ``Event:`` messages, optionally only those named in ``names`` (exact case)."""
    wanted = frozenset(names) if names is not None else None
    return [
        dict(message)
        for message in messages
        if "Event" in message and (wanted is None or message["Event"] in wanted)
    ]


def banner_version(data: bytes | str) -> str | None:
    """``11.0.0`` from a stream starting ``Asterisk Call Manager/11.0.0``; None without one."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    first_line = _LINE_BREAK.split(text, maxsplit=1)[0]
    if not first_line.startswith(BANNER_PREFIX):
        return None
    return first_line.removeprefix(BANNER_PREFIX).strip()


def format_message(fields: Mapping[str, str]) -> bytes:
    """One message on the wire: ``Key: value`` lines in CRLF, closed by a blank line."""
    lines = "".join(f"{key}: {value}{EOL}" for key, value in fields.items())
    return (lines + EOL).encode("utf-8")
