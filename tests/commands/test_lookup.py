"""``kommo-callerid lookup NUMBER``: one JSON object on stdout, logs on stderr, against the fake
Kommo over a real socket (``main()`` runs in a thread: it has its own event loop).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset

RESULT_KEYS = {
    "number", "normalized", "found", "entity", "phone_entity", "responsible_user_id",
    "source", "cached", "ms",
}  # fmt: skip


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as fake:
        yield fake


def config_for(tmp_path: Path, kommo: FakeKommo, token: str | None = None) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'[ami]\nsecret = "unused-here"\n'
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{token or kommo.token}"\n'
        '[log]\nformat = "json"\n'
    )
    return path


async def lookup(
    config: Path, number: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    code = await asyncio.to_thread(main, ["lookup", number, "-c", str(config)])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out  # one object, nothing else on stdout
    return code, json.loads(lines[0]), captured.err


async def test_a_known_caller(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, err = await lookup(config_for(tmp_path, kommo), "+1 (415) 555-0199", capsys)
    assert code == 0
    assert set(result) == RESULT_KEYS
    assert (result["normalized"], result["found"], result["source"]) == (
        "+14155550199",
        True,
        "by_phone",
    )
    assert result["entity"] == {
        "type": "lead", "id": 3001, "name": "Fleet renewal 2025", "responsible_user_id": 8320148
    }  # fmt: skip
    assert result["responsible_user_id"] == 8320148
    assert result["phone_entity"]["type"] == "contact"
    assert isinstance(result["ms"], float) and result["cached"] is False
    assert '"event": "kommo.lookup"' in err  # the log goes to stderr


async def test_an_unknown_caller_is_not_an_error(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = await lookup(config_for(tmp_path, kommo), "0049 30 9988776", capsys)
    assert code == 0
    assert set(result) == RESULT_KEYS
    assert result["normalized"] == "+49309988776"
    assert (result["found"], result["entity"], result["phone_entity"]) == (False, None, None)


async def test_a_kommo_error_exits_1(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path, kommo, token="not-the-token")
    code, result, err = await lookup(config, "14155550199", capsys)
    assert code == 1
    assert result["status"] == 401 and result["endpoint"] == "/api/v2/search/by_phone"
    assert result["error"] == "missing or invalid access token"
    assert '"event": "kommo.error"' in err and "not-the-token" not in err


async def test_an_unparseable_number_exits_1(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = await lookup(config_for(tmp_path, kommo), "call-me-maybe", capsys)
    assert code == 1
    assert result == {"number": "call-me-maybe", "error": "not a phone number"}
    assert kommo.requests == []
