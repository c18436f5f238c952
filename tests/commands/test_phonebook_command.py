"""``kommo-callerid phonebook [--sync] [--json]`` and ``lookup`` with ``[phonebook]``, against
the fake Kommo over real sockets (``main()`` runs in a thread: it has its own event loop)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo, demo_dataset


def config_for(tmp_path: Path, kommo: FakeKommo) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'[ami]\nsecret = "unused-here"\n'
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        '[log]\nformat = "json"\n'
        f'[phonebook]\nenabled = true\ndatabase = "{tmp_path / "pb.sqlite3"}"\n'
    )
    return path


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


async def test_sync_show_and_lookup_while_kommo_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeKommo(demo_dataset()) as kommo:
        config = str(config_for(tmp_path, kommo))
        code, status = await run(capsys, "phonebook", "--sync", "--json", "-c", config)
        assert code == 0
        assert status["entries"] == {"contacts": 5, "companies": 1, "leads": 5, "customers": 1}
        assert status["complete"] and status["fresh"]
        kommo.outage(503, 60.0)
        code, result = await run(capsys, "lookup", "+1 830 580 3077", "-c", config)
    assert code == 0
    assert (result["found"], result["source"], result["entity"]["name"]) == (
        True,
        "phonebook",
        "John Doe",
    )
    assert kommo.requests_to(BY_PHONE_PATH) == 0


async def test_without_a_mirror_yet_the_command_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeKommo(demo_dataset()) as kommo:
        config = str(config_for(tmp_path, kommo))
        code = await asyncio.to_thread(main, ["phonebook", "-c", config])
    assert code == 3
    assert "no phone book" in capsys.readouterr().out
