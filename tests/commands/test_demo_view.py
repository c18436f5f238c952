"""The demo's human view, fed the daemon's structured events directly (a manual clock): one
line per call, journal endings, the summary, and no alarm on a clean run."""

from __future__ import annotations

import io
from typing import Any

import pytest
import structlog

from kommo_callerid.commands.demo_view import DemoView, pretty_number

from support import ManualClock


class Feed:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.clock = ManualClock()
        self.view = DemoView(self.out, clock=self.clock)

    def __call__(self, event: str, **fields: Any) -> None:
        with pytest.raises(structlog.DropEvent):
            self.view(None, "info", {"event": event, "level": "info", **fields})

    def lines(self) -> list[str]:
        return [line.strip() for line in self.out.getvalue().splitlines() if line.strip()]


JOHN = {"call_id": "1.1", "caller": "18305803077"}
MARIA = {"call_id": "2.1", "caller": "14155550199"}


def _john_notified_twice(feed: Feed) -> None:
    feed("call.incoming", exten="5551000", channel="PJSIP/t-1", **JOHN)
    feed("call.ringing", extension="100", user=111, **JOHN)
    feed("call.skipped", reason="duplicate", exten="100", **JOHN)
    feed.clock.advance(0.0008)
    feed("kommo.notified", users=[111], ms=0.5, attempt=1, **JOHN)
    feed("kommo.lookup", entity_type="company", name="Kommo", cached=False, **JOHN)
    feed.clock.advance(0.0005)
    feed("kommo.notified", users=[8375357], ms=0.4, attempt=1, **JOHN)


def test_one_line_per_call_once_the_next_call_arrives() -> None:
    feed = Feed()
    _john_notified_twice(feed)
    assert feed.lines() == []
    feed("call.incoming", exten="5551000", channel="PJSIP/t-2", **MARIA)
    assert feed.lines() == [
        '+1 830-580-3077 → Kommo company "Kommo" → notified users 111, 8375357 in 1.3 ms'
    ]


def test_skipped_calls_keep_their_place_and_legs_say_nothing() -> None:
    feed = Feed()
    _john_notified_twice(feed)
    feed("call.skipped", reason="anonymous", exten="5551000", call_id="3.1", caller="anonymous")
    feed("call.skipped", reason="duplicate", exten="100", call_id="3.1", caller="anonymous")
    feed("call.skipped", reason="not_inbound", exten="102", call_id="4.1", caller="101")
    assert feed.lines()[1:] == [
        "anonymous → skipped: withheld number",
        "101 → 102 → skipped: not an inbound call",
    ]


def test_journal_endings_follow_the_calls() -> None:
    feed = Feed()
    _john_notified_twice(feed)
    feed("call.incoming", **MARIA)
    feed("kommo.lookup", entity_type=None, name=None, cached=True, **MARIA)
    feed("kommo.notified", users=None, **MARIA)
    feed("journal.recorded", status=4, duration=4.0, answered_by="101", **JOHN)
    feed("journal.recorded", status=6, duration=0, result="caller hung up after 25 s", **MARIA)
    feed("journal.sent", count=1, ms=3.0)
    feed.view.finish()
    lines = feed.lines()
    assert lines[1] == "+1 415-555-0199 → not in Kommo (cached) → notified everyone in 0.0 ms"
    assert lines[2:4] == [
        "+1 830-580-3077 ended: answered by 101 after 4 s → logged",
        "+1 415-555-0199 ended: caller hung up after 25 s → pending",
    ]
    assert "calls journaled          1 of 2 logged" in lines


def test_a_clean_run_ends_without_alarming_counters() -> None:
    feed = Feed()
    _john_notified_twice(feed)
    feed.view.finish()
    summary = feed.lines()[feed.lines().index("Summary") + 1 :]
    assert summary == [
        "inbound calls detected   1",
        "callers found in Kommo   1 of 1",
        "notifications sent       2 (to 2 users)",
        "call → notified          median 1.3 ms, slowest 1.3 ms",
    ]


def test_problems_are_shown_and_counted() -> None:
    feed = Feed()
    feed("call.incoming", **JOHN)
    feed("kommo.notify_dropped", reason="ttl", **JOHN)
    feed("kommo.error", level="error", status=503, detail="HTTP 503", endpoint="/api/v2/events")
    feed.view.finish()
    lines = feed.lines()
    assert "! kommo.error HTTP 503" in lines
    assert "+1 830-580-3077 → lookup pending → notification dropped (ttl)" in lines
    assert "notifications dropped    1" in lines
    assert "warnings and errors      1" in lines


@pytest.mark.parametrize(
    ("digits", "shown"),
    [("18305803077", "+1 830-580-3077"), ("442079460958", "+44 20 7946 0958"), ("101", "101")],
)
def test_numbers_are_shown_as_people_write_them(digits: str, shown: str) -> None:
    assert pretty_number(digits) == shown
