"""The signing key (the credential, else generated once, 0600, surviving restarts; a rotated
key kills older links), the token's own rules, and what ``check`` says about recordings."""

from __future__ import annotations

import stat
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from kommo_callerid.cli import main
from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.keys import KEY_FILE, SigningKeyError, signing_key
from kommo_callerid.recordings.token import Claim, Refusal, sign, verify

CLAIM = Claim("1704190500.10", date(2024, 1, 2), 0)


def test_a_generated_key_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    first = signing_key(SecretStr(""), tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert signing_key(SecretStr(""), tmp_path / "state") == first  # the next start
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary left


def test_a_deleted_key_file_is_a_rotation_old_links_die(tmp_path: Path) -> None:
    old = signing_key(SecretStr(""), tmp_path)
    token = sign(old, CLAIM)
    (tmp_path / KEY_FILE).unlink()
    new = signing_key(SecretStr(""), tmp_path)
    assert new != old
    assert verify(new, token, 0) is Refusal.SIGNATURE
    assert verify(old, token, 0) == CLAIM


def test_the_credential_wins_and_a_short_one_is_refused(tmp_path: Path) -> None:
    assert signing_key(SecretStr(" a-long-enough-key-123 \n"), tmp_path) == b"a-long-enough-key-123"
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(SigningKeyError, match="shorter than 16"):
        signing_key(SecretStr("short"), tmp_path)


def test_an_unusable_key_file_is_a_sentence(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("x")
    with pytest.raises(SigningKeyError, match="no usable key"):
        signing_key(SecretStr(""), tmp_path)


def test_a_token_names_no_path_and_expires() -> None:
    key = b"k" * 32
    token = sign(key, Claim("1704190500.10", date(2024, 1, 2), 2_000))
    assert "/" not in token and "monitor" not in token and "wav" not in token
    assert verify(key, token, 1_999.0) == Claim("1704190500.10", date(2024, 1, 2), 2_000)
    assert verify(key, token, 2_000.0) is Refusal.EXPIRED
    with pytest.raises(ValueError, match="Uniqueid"):
        sign(key, Claim("../../etc", date(2024, 1, 2), 0))


def test_the_pattern_must_name_one_call_inside_the_directory() -> None:
    assert RecordingsConfig(directory="").directory is None  # type: ignore[arg-type]
    for bad in ("{yyyy}/*.wav", "/abs/{uniqueid}.wav", "../{uniqueid}.wav", "{pbx}-{uniqueid}"):
        with pytest.raises(ValidationError):
            RecordingsConfig(pattern=bad)


CONFIG = """
[ami]
secret = "s3cret-from-the-test"
[kommo]
base_url = "https://acme.kommo.com"
access_token = "token-from-the-test"
token_file = "{state}/tokens.json"
[recordings]
directory = "{directory}"
"""


def test_check_says_whether_the_directory_is_there_and_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path, directory=tmp_path / "monitor"))
    path.chmod(0o600)
    assert main(["check", "--offline", "-c", str(path)]) == 0  # offline: a report only
    assert (
        f"[recordings] directory {tmp_path / 'monitor'} does not exist" in capsys.readouterr().out
    )
    (tmp_path / "monitor").mkdir()
    assert main(["check", "--offline", "-c", str(path)]) == 0
    assert f"recordings: {tmp_path / 'monitor'} is readable" in capsys.readouterr().out
