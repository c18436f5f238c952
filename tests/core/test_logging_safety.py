"""What reaches the terminal or the journal: control characters from the outside escaped in
every renderer, long names capped, live OAuth tokens and token shapes scrubbed."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.logging import (
    NAME_CHARS,
    SCRUBBED,
    configure_logging,
    json_for_terminal,
)

ESC_NAME = "\x1b[2J\x1b[HEve\u202eevil\x07"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiZXhwIjoxfQ.c2lnbmF0dXJlLXBhcnQ"
REFRESH = "def50200" + "0123456789abcdef" * 8


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_control_characters_are_escaped_in_every_renderer(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format=fmt), stream=stream)  # type: ignore[arg-type]
    structlog.get_logger("t").info("call.incoming", name=ESC_NAME, channels=["a\x1bb"])
    logging.getLogger("panoramisk").warning("odd line \x1b[31mred\r\n")
    out = stream.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\r" not in out
    assert len(lines(stream)) == 2
    if fmt == "json":
        first = json.loads(lines(stream)[0])
        assert first["name"] == "\\x1b[2J\\x1b[HEve\\u202eevil\\x07"
        assert first["channels"] == ["a\\x1bb"]


def test_names_are_capped_and_other_values_bounded() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), stream=stream)
    structlog.get_logger("t").info("kommo.lookup", name="Bartholomew " * 50, detail="x" * 10**6)
    line: dict[str, Any] = json.loads(lines(stream)[0])
    assert len(line["name"]) == NAME_CHARS and line["name"].endswith("\u2026")
    assert len(line["detail"]) <= 2000


def test_a_traceback_keeps_its_lines() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="console"), stream=stream)
    try:
        raise ValueError("bad \x1b input")
    except ValueError:
        structlog.get_logger("t").exception("daemon.crashed")
    out = stream.getvalue()
    assert "Traceback" in out and out.count("\n") > 3 and "\x1b" not in out


def test_live_tokens_and_token_shapes_are_scrubbed() -> None:
    stream = io.StringIO()
    scrubber = configure_logging(LogConfig(format="json"), secrets=["cfg-secret"], stream=stream)
    scrubber.remember("live-opaque-token-123")
    log = structlog.get_logger("t")
    log.error("kommo.error", detail="echo: live-opaque-token-123 and cfg-secret")
    log.error("kommo.error", detail=f"the token {JWT} is bad; refresh {REFRESH}")
    log.error("kommo.error", detail="header was Bearer Zq9xLr2vZq9xLr2v")
    logging.getLogger("aiohttp.client").warning("sent Authorization: Bearer %s", JWT)
    out = stream.getvalue()
    for secret in ("live-opaque-token-123", "cfg-secret", JWT, REFRESH, "Zq9xLr2vZq9xLr2v"):
        assert secret not in out
    assert out.count(SCRUBBED) >= 6


def test_only_the_latest_live_tokens_are_kept() -> None:
    scrubber = configure_logging(LogConfig(format="json"), stream=io.StringIO())
    for n in range(100):
        scrubber.remember(f"rotated-token-{n:04d}")
    assert len(scrubber._live) <= 16  # a year of daily refreshes does not grow the regex


# ---- JSON that commands print (lookup, journal --json) ----

_RAW_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


def test_json_for_terminal_escapes_what_json_leaves_raw() -> None:
    name = "Eve\x9b2J\u202eevil\u200b\x1b"
    text = json_for_terminal({"name": name, "n": 1}, indent=1)
    assert not _RAW_CONTROLS.search(text), text
    assert "\\u009b" in text and "\\u202e" in text and "\\u001b" in text
    assert json.loads(text) == {"name": name, "n": 1}


@given(st.recursive(st.text() | st.integers() | st.none(), st.lists))
def test_json_for_terminal_decodes_to_the_same_value(value: object) -> None:
    for indent in (None, 1):
        text = json_for_terminal(value, indent=indent)
        assert json.loads(text) == value
        assert not _RAW_CONTROLS.search(text)
