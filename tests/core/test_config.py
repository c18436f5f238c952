"""Configuration: TOML + env + systemd credentials, human errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kommo_callerid.core.config_load import ConfigError, load_config

from support import ROOT

MINIMAL = """
[ami]
secret = "ami-pass"
[kommo]
base_url = "https://acme.kommo.com"
access_token = "tok-123456"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.ami.port == 5038
    assert config.notify.fallback == "all"


def test_defaults_and_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.calls.min_digits == 7
    assert config.daemon.shutdown_timeout == 5.0
    with pytest.raises(Exception, match="frozen"):
        config.ami.port = 1  # type: ignore[misc]


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMMO_CALLERID_AMI__PORT", "6038")
    monkeypatch.setenv("KOMMO_CALLERID_CALLS__MIN_DIGITS", "5")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.ami.port == 6038
    assert config.calls.min_digits == 5


def test_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret").write_text("from-systemd\n")
    (creds / "kommo_access_token").write_text("token-from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = MINIMAL.replace('secret = "ami-pass"\n', "").replace('access_token = "tok-123456"', "")
    config = load_config(write(tmp_path, text))
    assert config.ami.secret.get_secret_value() == "from-systemd"
    assert config.kommo.access_token.get_secret_value() == "token-from-systemd"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "[ami2]\nx = 1\n", r"\[ami2\] is not a known key"),
        (MINIMAL.replace("port", "x") + "[calls]\nmin_digitz = 3\n", r"\[calls\] min_digitz"),
        (MINIMAL.replace("https://acme", "http://acme"), r"\[kommo\] base_url must use https"),
        (MINIMAL.replace('secret = "ami-pass"', ""), r"\[ami\] secret is required"),
        (MINIMAL + "[notify]\nfallback = 'some'\n", r"\[notify\] fallback"),
        (MINIMAL + "[calls]\ndefault_region = 'XX'\n", r"unknown region"),
        (MINIMAL.replace('access_token = "tok-123456"', ""), r"no Kommo credentials"),
        ("[ami\n", r"not valid TOML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "tok-123456" not in str(info.value)


def test_loopback_http_is_allowed(tmp_path: Path) -> None:
    for host in ("127.0.0.1:8080", "localhost", "[::1]:9000"):
        config = load_config(
            write(tmp_path, MINIMAL.replace("https://acme.kommo.com", f"http://{host}"))
        )
        assert config.kommo.base_url.startswith("http://")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
