"""The command line as an operator runs it: a real process, real sockets, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import ROOT, wait_for


def write_config(
    tmp_path: Path, ami_port: int, kommo: FakeKommo, secret: str = DEMO_SECRET
) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f"""
[ami]
port = {ami_port}
username = "{DEMO_USERNAME}"
secret = "{secret}"
reconnect_min = 0.05
reconnect_max = 0.2

[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"

[notify]
fallback_after = 0.3

[log]
format = "json"

[journal]
database = "{tmp_path / "journal.sqlite3"}"
"""
    )
    return path


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KOMMO_CALLERID_CONFIG", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kommo_callerid", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def test_run_notifies_callers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    callers = ["18305803077", "14155550199", "12125550142", "442079460958", "13125550100"]
    scenarios = CallScenarios()
    calls = [scenarios.inbound(number) for number in callers]
    extra = [scenarios.anonymous(), scenarios.inbound("101")]
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        proc = await start_daemon(write_config(tmp_path, ami.port, kommo))
        await ami.wait_logged_in(timeout=10)
        for call in calls + extra:
            await ami.play(call.events)
        await wait_for(lambda: {e.phone_number for e in kommo.events} >= set(callers), 10)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
        token = kommo.token
    assert proc.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert all("event" in line and "timestamp" in line and "level" in line for line in lines)
    events = [line["event"] for line in lines]
    assert events[0] == "daemon.started" and events[-1] == "daemon.stopped"
    assert events.count("call.incoming") == 5
    reasons = {line.get("reason") for line in lines if line["event"] == "call.skipped"}
    assert {"anonymous", "internal", "duplicate"} <= reasons
    output = stdout.decode() + stderr.decode()
    assert DEMO_SECRET not in output and token not in output


async def test_wrong_ami_secret_at_start_exits_3(tmp_path: Path) -> None:
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        proc = await start_daemon(write_config(tmp_path, ami.port, kommo, secret="wrong-one"))
        stdout, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 3
    failed = [json.loads(x) for x in stdout.decode().splitlines() if "ami.login_failed" in x]
    assert failed and failed[0]["message"] == "Authentication failed"
    assert "wrong-one" not in stdout.decode()


def test_check_offline_accepts_the_example_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--offline", "-c", str(ROOT / "config.example.toml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_bad_config_exits_3_with_a_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ami]\nsecret = "x"\nprot = 1\n[kommo]\nbase_url = "http://crm.example.com"\n')
    with pytest.raises(SystemExit) as info:
        main(["check", "--offline", "-c", str(bad)])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "[ami] prot is not a known key" in err and "[kommo] base_url must use https" in err
    assert str(bad) in err and "Traceback" not in err


def test_missing_config_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "-c", str(tmp_path / "missing.toml")])
    assert info.value.code == 3
    assert "does not exist" in capsys.readouterr().err


def test_bad_command_line_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


async def test_lookup_prints_one_json_object(tmp_path: Path) -> None:
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        config = write_config(tmp_path, ami.port, kommo)
        command = ["-m", "kommo_callerid", "lookup", "+1 (415) 555-0199", "-c", str(config)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["normalized"] == "+14155550199"
    assert result["entity"] == {
        "type": "lead", "id": 3001, "name": "Fleet renewal 2025", "responsible_user_id": 8320148
    }  # fmt: skip
    assert result["phone_entity"]["name"] == "Maria Garcia"
    assert result["source"] == "by_phone"


def test_demo_runs_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--calls", "3", "--json"]) == 0
    out = capsys.readouterr().out
    assert "daemon.started" in out and "kommo.notified" in out
    assert "3 inbound calls placed" in out


def test_oauth_without_any_token_exits_3_and_says_how_to_authorise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "oauth.toml"
    cfg.write_text(
        '[ami]\nsecret = "x"\n[kommo]\nbase_url = "https://acme.kommo.com"\n'
        'client_id = "id"\nclient_secret = "cs"\nredirect_uri = "https://acme.example/cb"\n'
        f'token_file = "{tmp_path / "tokens.json"}"\n'
    )
    assert main(["run", "-c", str(cfg)]) == 3
    out = capsys.readouterr().out
    assert "kommo.error" in out and "kommo-callerid authorize" in out


def test_a_closed_stdout_does_not_break_logging() -> None:
    import io

    import structlog

    from kommo_callerid.core.config import LogConfig
    from kommo_callerid.core.logging import configure_logging

    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), stream=stream)
    stream.close()
    structlog.get_logger("test").info("still.alive")  # must not raise


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["lookup", "--help"]])
def test_help_names_exit_codes_and_environment(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3  bad configuration" in out
    assert "KOMMO_CALLERID_CONFIG" in out and "CREDENTIALS_DIRECTORY" in out
    if "lookup" in argv:
        assert "a phone number as a caller ID shows it" in out
