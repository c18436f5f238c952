"""Several PBXs: ``[ami.NAME]`` tables over the ``[ami]`` defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import ConfigError, load_config

KOMMO = """
[kommo]
base_url = "https://acme.kommo.com"
access_token = "tok-123456"
"""

TWO_PBXS = (
    """
[ami]
username = "callerid"
secret = "shared"
ping_interval = 3.0

[ami.north]
host = "10.0.0.5"

[ami.south]
host = "10.0.1.5"
port = 5039
secret = "south-only"
inbound_contexts = ["from-pstn*"]
"""
    + KOMMO
)


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def test_one_unnamed_ami_is_one_pbx_without_a_name(tmp_path: Path) -> None:
    config = load(tmp_path, '[ami]\nsecret = "s"\n' + KOMMO)
    (pbx,) = config.pbxs
    assert (pbx.name, pbx.ami) == ("", config.ami)
    assert pbx.inbound_contexts == config.calls.inbound_contexts


def test_named_tables_take_the_ami_keys_as_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, TWO_PBXS)
    north, south = config.pbxs
    assert (north.name, north.ami.host, north.ami.port) == ("north", "10.0.0.5", 5038)
    assert (north.ami.username, north.ami.ping_interval) == ("callerid", 3.0)
    assert north.ami.secret.get_secret_value() == "shared"
    assert (south.ami.port, south.ami.secret.get_secret_value()) == (5039, "south-only")
    assert north.inbound_contexts == config.calls.inbound_contexts
    assert south.inbound_contexts == ("from-pstn*",)
    assert south.outbound_contexts == config.calls.outbound_contexts


def test_env_overrides_a_named_pbx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMMO_CALLERID_AMI__NORTH__HOST", "10.9.9.9")
    monkeypatch.setenv("KOMMO_CALLERID_AMI__EAST__HOST", "10.0.2.5")
    config = load(tmp_path, TWO_PBXS)
    assert {pbx.name: pbx.ami.host for pbx in config.pbxs} == {
        "east": "10.0.2.5",
        "north": "10.9.9.9",
        "south": "10.0.1.5",
    }


def test_secret_files_per_pbx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret_north").write_text("north-file\n")
    (creds / "ami_secret").write_text("default-file\n")
    (creds / "ami_secret_gone").write_text("a PBX no longer configured\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = TWO_PBXS.replace('secret = "shared"\n', "").replace('secret = "south-only"\n', "")
    config = load(tmp_path, text)
    secrets = {pbx.name: pbx.ami.secret.get_secret_value() for pbx in config.pbxs}
    assert secrets == {"north": "north-file", "south": "default-file"}


def test_a_stray_secret_file_does_not_name_the_unnamed_pbx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret_north").write_text("north-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load(tmp_path, '[ami]\nsecret = "s"\n' + KOMMO)
    assert [pbx.name for pbx in config.pbxs] == [""]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[ami]\n[ami.north]\nhost = "h"\n', r"\[ami\] north.secret is required"),
        ('[ami]\nsecret = "s"\n[ami.North]\n', r"\[ami\] North is not a PBX name"),
        ('[ami]\nsecret = "s"\n[ami.tls]\n', r"tls is a key of \[ami\]"),
        ('[ami]\nsecret = "s"\n[ami.north]\nhots = "h"\n', r"\[ami\] north.hots is not a known"),
        (
            '[ami]\nsecret = "s"\n[notify.extensions]\n"north/101" = 1\n',
            r"\[notify\] extensions.north/101 names no configured PBX",
        ),
        (
            '[ami.north]\nsecret = "s"\n[notify.dids]\n"sooth/5551000" = [1]\n',
            r"dids.sooth/5551000 names no configured PBX \(PBXs: north\)",
        ),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text + KOMMO)
