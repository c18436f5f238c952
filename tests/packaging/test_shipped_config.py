"""The .deb's /etc/kommo-callerid/config.toml (config.example.toml through
packaging/deb/shipped-config.sh): no secret in it, and valid once the operator has written the
credential files the unit loads. CI checks the installed file the same way (.ci/package)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from kommo_callerid.core.config_load import ConfigError, load_config

from support import ROOT

SHIP = ROOT / "packaging" / "deb" / "shipped-config.sh"
UNIT = ROOT / "systemd" / "kommo-callerid.service"


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    text = subprocess.run(
        [SHIP, ROOT / "config.example.toml"], check=True, capture_output=True, text=True
    ).stdout
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_the_shipped_config_holds_no_secret(shipped: Path) -> None:
    data = tomllib.loads(shipped.read_text(encoding="utf-8"))
    assert "secret" not in data["ami"]
    assert "access_token" not in data["kommo"]
    with pytest.raises(ConfigError, match="secret"):
        load_config(shipped)


def test_the_shipped_config_is_valid_with_the_credentials(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ami_secret").write_text("an-ami-secret")
    (credentials / "kommo_access_token").write_text("a-kommo-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(shipped)
    assert config.ami.secret.get_secret_value() == "an-ami-secret"


def test_the_unit_loads_the_credentials_the_package_asks_for() -> None:
    unit = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/bin/kommo-callerid run -c /etc/kommo-callerid/config.toml" in unit
    for name in ("ami_secret", "kommo_access_token"):
        assert f"\nLoadCredential={name}:/etc/kommo-callerid/credentials/{name}\n" in unit
