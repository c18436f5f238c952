"""core.log_soon: a hot path's line waits one loop turn, in order, with the caller's fields."""

from __future__ import annotations

import asyncio

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars
from structlog.testing import capture_logs

from kommo_callerid.core.log_soon import info_soon

from support import events

log = structlog.get_logger("test")


async def test_the_line_comes_after_the_callers_step_in_order_with_its_bound_fields() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        bind_contextvars(call_id="1")
        info_soon(log, "call.incoming", exten="5551000")
        info_soon(log, "call.ringing", extension="100")
        clear_contextvars()  # what the caller does next does not change its lines
        assert logs == []  # the lines wait for the next loop turn
        await asyncio.sleep(0)
    assert [(line["event"], line["call_id"]) for line in logs] == [
        ("call.incoming", "1"),
        ("call.ringing", "1"),
    ]
    assert events(logs, "call.incoming")[0]["exten"] == "5551000"


def test_without_a_running_loop_the_line_is_written_at_once() -> None:
    clear_contextvars()
    with capture_logs() as logs:
        info_soon(log, "kommo.lookup", cached=True)
    assert [line["event"] for line in logs] == ["kommo.lookup"]
