"""``kommo-callerid journal``: the records newest first, filters, --json, retry."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.core.models import CallStatus
from kommo_callerid.journal.entry import State, build_entry
from kommo_callerid.journal.outbox import Outbox

from support import finished_call


@pytest.fixture
def config(tmp_path: Path) -> Path:
    database = tmp_path / "journal.sqlite3"
    now = time.time()
    calls = [
        finished_call("7.1", "+18305803077", duration=134, started_at=now - 3600),
        finished_call("7.2", "+13125550100", status=CallStatus.NO_ANSWER, started_at=now - 60),
    ]
    outbox = Outbox.open(database)
    sent, dropped = outbox.insert(
        [build_entry(c, JournalConfig(), NotifyConfig(), c.started_at + 5) for c in calls]  # type: ignore[misc]
    )[0]
    outbox.update(
        [
            replace(sent, state=State.SENT, entity_type="contact", entity_id=1001),
            replace(dropped, state=State.DROPPED, reason="rejected", detail="refused"),
        ]
    )
    outbox.close()
    path = tmp_path / "config.toml"
    path.write_text(
        '[ami]\nsecret = "x"\n[kommo]\nbase_url = "https://acme.kommo.com"\n'
        f'access_token = "t"\n[journal]\ndatabase = "{database}"\n'
    )
    return path


def test_table_newest_first_with_kommo_state(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["WHEN", "CALL", "DIRECTION"]
    assert "7.2" in lines[1] and "dropped (rejected): refused" in lines[1]
    assert "7.1" in lines[2] and "2:14" in lines[2] and "sent to contact 1001" in lines[2]
    assert lines[-1] == "2 shown; in the outbox: 0 pending, 1 sent, 1 dropped"


def test_filters_json_and_retry(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "-c", str(config), "--failed", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert (record["call_id"], record["state"], record["reason"]) == ("7.2", "dropped", "rejected")
    assert main(["journal", "-c", str(config), "--since", "10m", "--json"]) == 0
    assert [r["call_id"] for r in json.loads(capsys.readouterr().out)] == ["7.2"]
    assert main(["journal", "retry", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith("1 dropped record is pending again")
    assert main(["journal", "-c", str(config), "--pending", "--json"]) == 0
    assert [r["call_id"] for r in json.loads(capsys.readouterr().out)] == ["7.2"]
    with pytest.raises(SystemExit) as bad:
        main(["journal", "-c", str(config), "--since", "soon"])
    assert bad.value.code == 2
