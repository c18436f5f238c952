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
