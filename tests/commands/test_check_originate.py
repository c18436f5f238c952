"""``check`` with ``[clicktocall] enabled``: does the AMI user have ``write = originate``?"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo


def _config(tmp_path: Path, ami: FakeAmiServer, kommo: FakeKommo) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f"""
[ami]
port = {ami.port}
username = "{DEMO_USERNAME}"
secret = "{DEMO_SECRET}"
connect_timeout = 3.0
[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"
client_id = "cid"
client_secret = "csecret"
timeout = 3.0
[public]
listen = "127.0.0.1:0"
[clicktocall]
enabled = true
"""
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("write", "expected", "line"),
    [
        (frozenset({"system", "originate"}), 0, "OK   AMI: write = originate allowed"),
        (frozenset({"system"}), 1, "FAIL AMI: the AMI user 'kommo-callerid' may not Originate"),
    ],
)
async def test_write_originate_is_reported(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    write: frozenset[str],
    expected: int,
    line: str,
) -> None:
    users = {DEMO_USERNAME: AmiUser(DEMO_SECRET, write=write)}
    async with FakeAmiServer(users=users) as ami, FakeKommo() as kommo:
        config = _config(tmp_path, ami, kommo)
        code = await asyncio.to_thread(main, ["check", "-c", str(config), "--listen", "0"])
        assert [a.get("channel") for a in ami.actions if a["action"] == "Originate"] == [None]
    out = capsys.readouterr().out
    assert code == expected
    assert line in out
