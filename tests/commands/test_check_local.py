"""``check --offline`` warns about this host's files: example values, credential files other
users may read, a world-writable token file, secrets in a world-readable config file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import ROOT, wait_for

GOOD = """
[ami]
username = "kommo-callerid"
[kommo]
base_url = "https://acme.kommo.com"
client_id = "integration"
redirect_uri = "https://pbx.example/kommo"
token_file = "{token_file}"
[journal]
database = "{journal}"
"""


def offline(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["check", "--offline", "-c", str(path)]) == 0  # warnings do not fail
    return capsys.readouterr().out


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/etc/kommo-callerid as the README sets it up: config 0644, credentials 0600."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    etc = tmp_path / "etc"
    (etc / "credentials").mkdir(parents=True)
    for name, value in (("ami_secret", "s3cret"), ("kommo_client_secret", "cs")):
        (etc / "credentials" / name).write_text(value)
        (etc / "credentials" / name).chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(etc / "credentials"))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "tokens.json").write_text("{}")
    (state / "tokens.json").chmod(0o600)
    config = etc / "config.toml"
    config.write_text(
        GOOD.format(token_file=state / "tokens.json", journal=state / "journal.sqlite3")
    )
    config.chmod(0o644)
    return config


def test_a_tidy_host_has_no_warning(host: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = offline(host, capsys)
    assert "WARN" not in out and "OK   files:" in out


def test_the_unedited_example_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    out = offline(ROOT / "config.example.toml", capsys)
    assert "WARN [ami] secret is still the example value" in out
    assert "WARN [kommo] access_token is still the example value" in out
    assert "WARN [kommo] base_url is still the example" in out


def test_a_0644_credential_file_is_warned_about(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = host.parent / "credentials" / "ami_secret"
    secret.chmod(0o644)
    out = offline(host, capsys)
    assert f"credential file {secret} may be read by other users (mode 0644)" in out
    assert f"chmod 600 {secret}" in out


def test_a_world_writable_token_file_is_warned_about(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "state" / "tokens.json"
    os.chmod(token_file, 0o666)
    out = offline(host, capsys)
    assert f"the OAuth token file {token_file} may be written by every user" in out


def test_secrets_in_a_world_readable_config_are_warned_about(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inline = '[kommo]\nclient_secret = "inline"\nproxy = "http://u:pw-inline@proxy:3128"'
    host.write_text(host.read_text().replace("[kommo]", inline))
    out = offline(host, capsys)
    assert "holds [kommo] client_secret, [kommo] proxy's password" in out
    assert "inline" not in out


def test_a_missing_journal_directory_is_warned_about(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, check said "No problems" and ``run`` then exited 3 (now it runs, with the
    journal unusable): check names the directory and how to make it."""
    missing = tmp_path / "nowhere" / "journal.sqlite3"
    host.write_text(
        host.read_text().replace(str(tmp_path / "state" / "journal.sqlite3"), str(missing))
    )
    out = offline(host, capsys)
    assert f"the call journal's directory {missing.parent} does not exist" in out
    assert f"install -d -m 0700 {missing.parent}" in out


def test_a_journal_database_that_is_not_sqlite_is_warned_about(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "state" / "journal.sqlite3"
    broken.write_bytes(b"not a database at all")
    out = offline(host, capsys)
    assert f"the call journal's database {broken} is not an SQLite database" in out


async def test_a_hostile_context_name_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check prints the contexts new channels start in: what the PBX names them is escaped."""
    hostile = "from-\x1b]0;pwned\x07trunk\x1b[2J"
    scenarios = CallScenarios(inbound_context=hostile)
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        config = tmp_path / "cfg.toml"
        config.write_text(
            f'[ami]\nport = {ami.port}\nusername = "{DEMO_USERNAME}"\nsecret = "{DEMO_SECRET}"\n'
            f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        )
        config.chmod(0o600)
        args = ["check", "-c", str(config), "--listen", "1.5"]
        checking = asyncio.create_task(asyncio.to_thread(main, args))
        await wait_for(lambda: any(a.get("action") == "CoreShowChannels" for a in ami.actions))
        await ami.play(scenarios.inbound("18305803077", agents=()).events)
        await checking
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "from-\\x1b]0;pwned\\x07trunk\\x1b[2J" in out
