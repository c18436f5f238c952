"""``kommo-callerid check`` with several PBXs: each one reported under its name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as fake:
        yield fake


async def test_each_pbx_is_checked_under_its_name(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cfg.toml"
    async with FakeAmiServer() as north, FakeAmiServer() as south:
        ports = north.port, south.port
        path.write_text(
            f"""
[ami]
username = "{DEMO_USERNAME}"
secret = "{DEMO_SECRET}"
connect_timeout = 3.0
[ami.north]
port = {north.port}
[ami.south]
port = {south.port}
secret = "wrong"

[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"
"""
        )
        code = await asyncio.to_thread(main, ["check", "-c", str(path), "--listen", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"AMI north: {DEMO_USERNAME}@127.0.0.1:{ports[0]}" in out
    assert "OK   AMI north: logged in to 127.0.0.1" in out
    assert f"FAIL AMI south: login as {DEMO_USERNAME!r} refused" in out
    assert "make [ami.south] username and secret (or the ami_secret_south credential file)" in out
    assert DEMO_SECRET not in out


def test_offline_check_lists_every_pbx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(
        """
[ami]
secret = "s"
[ami.north]
host = "10.0.0.5"
[ami.south]
host = "10.0.1.5"
inbound_contexts = ["from-pstn*"]

[kommo]
base_url = "https://acme.kommo.com"
access_token = "tok"
"""
    )
    assert main(["check", "-c", str(path), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "AMI north: kommo-callerid@10.0.0.5:5038\n" in out
    assert "AMI south: kommo-callerid@10.0.1.5:5038 (inbound contexts: from-pstn*)" in out


def test_offline_check_judges_each_pbx_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(
        """
[ami.north]
secret = "change-me"
[ami.south]
secret = "a-real-one"

[kommo]
base_url = "https://acme.kommo.com"
access_token = "tok"
"""
    )
    path.chmod(0o644)
    assert main(["check", "-c", str(path), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "WARN [ami.north] secret is still the example value" in out
    assert "ami_secret_north credential file" in out
    assert "[ami] secret is still" not in out and "[ami.south] secret is still" not in out
    assert "holds [kommo] access_token, [ami.north] secret, [ami.south] secret" in out
