"""``kommo-callerid demo`` end to end: the story by default, the raw JSON log with --json."""

from __future__ import annotations

import json

import pytest

from kommo_callerid.cli import main


def test_the_demo_tells_a_story(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--calls", "3"]) == 0
    out = capsys.readouterr().out
    book = "(answered from the phone book)"
    assert f'+1 830-580-3077 → Kommo contact "John Doe" {book} → notified user 8375357 in ' in out
    assert f'+1 415-555-0199 → Kommo lead "Fleet renewal 2025" {book} → notified users ' in out
    assert "anonymous → skipped: withheld number" in out
    assert "inbound calls detected   3" in out
    assert "{" not in out  # no raw log line
    assert "dropped" not in out and "error" not in out


def test_the_demo_prints_the_raw_log_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--calls", "1", "--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    events = {json.loads(line)["event"] for line in lines}
    assert {"daemon.started", "call.incoming", "kommo.notified", "daemon.stopped"} <= events


def test_the_header_counts_the_lines_that_follow_and_the_unsorted_lead_is_explained(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 18, point 20: "5 inbound calls" promised and 7 lines followed; the unknown
    caller's "logged" did not say it took the demo's ``unknown = "unsorted"``."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    story = out.split("\nSummary\n")[0].splitlines()
    call_lines = [line for line in story if line.startswith("  ") and "→" in line]
    placed = [line for line in call_lines if " ended: " not in line]
    assert f"{len(placed)} calls: 5 inbound and 2 the daemon must skip" in header
    unknown = [line for line in call_lines if line.startswith("  +1 312-555-0100 ended:")]
    assert len(unknown) == 1
    assert "incoming lead" in unknown[0]
    assert 'the demo sets [journal] unknown = "unsorted"' in unknown[0]
    assert 'the default "skip"' in unknown[0]
