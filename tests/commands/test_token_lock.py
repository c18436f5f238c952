"""An unusable ``tokens.json.lock`` is an operator's mistake: every command exits 3 with the
fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kommo_callerid.cli import main

OAUTH = """
[ami]
secret = "x"
[kommo]
base_url = "https://acme.kommo.com"
client_id = "id"
client_secret = "cs"
redirect_uri = "https://acme.example/cb"
refresh_token = "first"
token_file = "{token_file}"
"""


@pytest.mark.parametrize(
    "argv", [["lookup", "+18305803077"], ["authorize", "def50200-code"], ["run"]]
)
def test_an_unusable_token_lock_exits_3_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "tokens.json.lock").mkdir()  # cannot be opened for locking
    config = tmp_path / "oauth.toml"
    config.write_text(OAUTH.format(token_file=tmp_path / "tokens.json"))
    assert main([*argv, "-c", str(config)]) == 3
    captured = capsys.readouterr()
    assert "tokens.json.lock" in captured.out + captured.err
    assert "systemctl restart kommo-callerid" in captured.out + captured.err
    assert "Traceback" not in captured.err
