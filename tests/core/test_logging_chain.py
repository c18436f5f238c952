"""The two-processor chain says what the eight-processor chain said: the same keys and values
(structlog's own processors as the reference), a timestamp in the same format, JSON as
``json.dumps`` writes it, and the guards' fast path never skipping a line that needs them."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.log_guards import (
    SCRUBBED,
    LineGuard,
    SecretScrubber,
    mask_numbers,
    neutralise,
)
from kommo_callerid.core.logging import UtcStamp, configure_logging

REFRESH = "def50200" + "0123456789abcdef" * 8


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def reference(scrubber: SecretScrubber, mask: bool, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The guards one after another, each over the whole line: what the fast path must equal."""
    if mask:
        mask_numbers(None, "", event_dict)
    scrubber.scrub(event_dict)
    return neutralise(event_dict)


_texts = st.text(max_size=120) | st.sampled_from(
    ["cfg-secret", "Bearer Zq9xLr2vZq9xLr2v", "bEaReR Zq9xLr2vZq9xLr2v", REFRESH, "+18305803077"]
)
_values = _texts | st.integers() | st.floats() | st.none() | st.lists(_texts | st.integers())
_lines = st.dictionaries(
    st.sampled_from(["event", "name", "caller", "detail", "exception", "users", "n"]), _values
)


@given(_lines, st.booleans())
def test_the_fused_guard_equals_the_guards_one_by_one(line: dict[str, Any], mask: bool) -> None:
    scrubber = SecretScrubber(["cfg-secret"])
    expected = reference(scrubber, mask, dict(line))
    got = LineGuard(scrubber, mask=mask)(None, "", dict(line))
    assert json.dumps(got) == json.dumps(expected)


def test_a_secret_in_any_case_of_bearer_or_in_a_list_is_scrubbed() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), secrets=["cfg-secret"], stream=stream)
    log = structlog.get_logger("t")
    log.error("kommo.error", detail="header was bEaReR Zq9xLr2vZq9xLr2v")
    log.info("kommo.notified", users=[1, "cfg-secret", REFRESH])
    out = stream.getvalue()
    for secret in ("Zq9xLr2vZq9xLr2v", "cfg-secret", REFRESH):
        assert secret not in out
    assert out.count(SCRUBBED) == 3


def test_a_line_has_the_keys_and_values_structlogs_processors_give() -> None:
    """The reference is structlog's stock chain (contextvars, level, ISO timestamp,
    exception), as the daemon had it before the processors were fused."""
    ours, stock = io.StringIO(), io.StringIO()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(call_id="1700000000.1", caller="+18305803077")
    try:
        for stream, fused in ((ours, True), (stock, False)):
            configure_logging(LogConfig(format="json", mask_numbers=True), stream=stream)
            if not fused:
                structlog.configure(
                    processors=[
                        structlog.contextvars.merge_contextvars,
                        structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.format_exc_info,
                        mask_numbers,
                        structlog.processors.JSONRenderer(),
                    ]
                )
            log = structlog.get_logger("t")
            log.info("call.incoming", exten="5551000", name="Zoë", ms=1.5, users=[1, 2])
            log.warn("kommo.error", status=None, detail={"x": object.__name__})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("daemon.task_failed", task="t")
    finally:
        structlog.contextvars.clear_contextvars()
    pairs = zip(ours.getvalue().splitlines(), stock.getvalue().splitlines(), strict=True)
    for mine, theirs in pairs:
        a, b = json.loads(mine), json.loads(theirs)
        assert list(a) == list(b)  # the same keys in the same order
        assert a.pop("timestamp")[:16] == b.pop("timestamp")[:16]
        assert a == b
    assert json.loads(ours.getvalue().splitlines()[0])["caller"] == "+1830***3077"


@pytest.mark.parametrize(
    "nanos",
    [0, 1_700_000_000_000_000_000, 1_700_000_000_000_001_000, 1_799_999_999_999_999_999],
)
def test_the_timestamp_is_structlogs_iso_utc(nanos: int) -> None:
    stamp = UtcStamp(clock_ns=lambda: nanos)
    second, rest = divmod(nanos, 10**9)
    moment = datetime.fromtimestamp(second, UTC).replace(microsecond=rest // 1000)
    assert stamp() == moment.isoformat().replace("+00:00", "Z")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp())


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    now = [1_700_000_000_999_999_000]
    stamp = UtcStamp(clock_ns=lambda: now[0])
    assert stamp() == "2023-11-14T22:13:20.999999Z"
    now[0] += 1000
    assert stamp() == "2023-11-14T22:13:21Z"
    now[0] += 86_400 * 10**9 + 5000
    assert stamp() == "2023-11-15T22:13:21.000005Z"


class _Custom:
    def __structlog__(self) -> str:
        return "custom view"


def test_json_is_what_json_dumps_writes() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), stream=stream)
    fields: dict[str, Any] = {
        "name": "Zoë \u4e2d",
        "ms": 0.1 + 0.2,
        "big": 10**30,
        "nan": math.nan,
        "flag": True,
        "none": None,
        "nested": {"a": [1, 2.5, "x"]},
        "custom": _Custom(),
        "other": {1, 2} and frozenset({1}),
    }
    structlog.get_logger("t").info("e", **fields)
    line = stream.getvalue().splitlines()[0]
    decoded = json.loads(line)
    expected = {**fields, "custom": "custom view", "other": repr(frozenset({1}))}
    expected.update(event="e", level="info", timestamp=decoded["timestamp"])
    assert line == json.dumps(expected)
