"""Operator mistakes in the configuration: exit 3 with a sentence in TOML words, never a
traceback; inf/nan and absurd numbers refused; a list env override may be a comma list."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.core.config_load import ConfigError, load_config

from support import run_as_nobody

MINIMAL = """
[ami]
secret = "ami-pass"
[kommo]
base_url = "https://acme.kommo.com"
access_token = "tok-123456"
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def check_offline(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``check --offline`` must exit 3; its stderr."""
    with pytest.raises(SystemExit) as info:
        main(["check", "--offline", "-c", str(path)])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "tok-123456" not in err
    return err


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("kommo", "rate_limit"),
        ("kommo", "timeout"),
        ("daemon", "shutdown_timeout"),
        ("cache", "ttl"),
        ("calls", "notify_ttl"),
        ("ami", "ping_interval"),
        ("notify", "fallback_after"),
    ],
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_inf_and_nan_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, value: str
) -> None:
    text = MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n")
    if f"[{section}]" not in text:
        text += f"[{section}]\n{key} = {value}\n"
    err = check_offline(write(tmp_path, text), capsys)
    assert f"[{section}] {key}" in err


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("kommo", "rate_limit", "1e9", "must be at most 1000"),
        ("kommo", "timeout", "86400", "must be at most 300"),
        ("daemon", "shutdown_timeout", "1e6", "must be at most 600"),
        ("cache", "ttl", "1e12", "must be at most 2592000"),
        ("cache", "max_entries", "10000000000", "must be at most 10000000"),
        ("ami", "reconnect_max", "1e9", "must be at most 3600"),
        ("kommo", "timeout", "0", "must be more than 0"),
    ],
)
def test_every_number_has_a_sane_bound(
    tmp_path: Path, section: str, key: str, value: str, words: str
) -> None:
    text = MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n")
    if f"{key} = {value}" not in text:
        text += f"[{section}]\n{key} = {value}\n"
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key} {words}"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[calls]\ninbound_contexts = 'from-pstn'\n", r"\[calls\] inbound_contexts must be a list"),
        ("[calls]\nmin_digits = 'seven'\n", r"\[calls\] min_digits must be a whole number"),
        ("[log]\nmask_numbers = 'maybe'\n", r"\[log\] mask_numbers must be true or false"),
        ("[notify]\nextensions = 5\n", r"\[notify\] extensions must be a table"),
        ("[notify.extensions]\n101 = 0\n", r"\[notify\] extensions.101 must be at least 1"),
        ("_env_prefix = 'X'\n", r"\[_env_prefix\] is not a known section"),
    ],
)
def test_messages_speak_toml(tmp_path: Path, extra: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        load_config(write(tmp_path, extra + MINIMAL))
    assert "tuple" not in str(info.value) and "dictionary" not in str(info.value)


def test_a_binary_config_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = check_offline(write(tmp_path, b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"), capsys)
    assert "not UTF-8 text" in err


def test_a_latin1_config_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MINIMAL + '[journal]\nsource = "Se\xf1or"\n'
    err = check_offline(write(tmp_path, text.encode("latin-1")), capsys)
    assert "not UTF-8 text" in err


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\x00\x01\xff\xfebinary", "not one line of text"), (b"secret\nsecond", "not one line")],
)
def test_a_bad_credential_file_exits_3(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    words: str,
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret").write_bytes(content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    err = check_offline(write(tmp_path, MINIMAL), capsys)
    assert f"{creds / 'ami_secret'}" in err and words in err


def test_an_unreadable_credential_file_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    top = Path(tempfile.mkdtemp(prefix="kcid-"))  # nobody can enter it; tmp_path is root-only
    try:
        top.chmod(0o755)
        creds = top / "creds"
        creds.mkdir(mode=0o755)
        (creds / "ami_secret").write_text("x")
        (creds / "ami_secret").chmod(0o600 if os.geteuid() == 0 else 0)  # root's 0600
        config = write(top, MINIMAL)
        config.chmod(0o644)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        if os.geteuid() == 0:
            verdict = run_as_nobody(lambda: load_config(config))
        else:
            verdict = _verdict(lambda: load_config(config))
    finally:
        shutil.rmtree(top)
    assert verdict.startswith("ConfigError: The credential file"), verdict
    assert "cannot be read: Permission denied" in verdict


def _verdict(action: Callable[[], object]) -> str:
    try:
        return f"ok: {action()!r}"
    except ConfigError as exc:
        return f"ConfigError: {exc}"


def test_a_directory_or_a_dangling_link_among_credentials_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret").mkdir()  # is_file() is False: skipped, [ami] secret from the file
    (creds / "kommo_access_token").symlink_to(tmp_path / "dangling")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load_config(write(tmp_path, MINIMAL))
    assert config.ami.secret.get_secret_value() == "ami-pass"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("from-pstn", ("from-pstn",)),
        ("from-pstn, from-trunk", ("from-pstn", "from-trunk")),
        ('["from-pstn", "from-did"]', ("from-pstn", "from-did")),
    ],
)
def test_a_list_env_override_may_be_a_comma_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("KOMMO_CALLERID_CALLS__INBOUND_CONTEXTS", value)
    assert load_config(write(tmp_path, MINIMAL)).calls.inbound_contexts == expected


def test_a_bad_table_env_override_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KOMMO_CALLERID_NOTIFY__DIDS", "5551000=7")
    err = check_offline(write(tmp_path, MINIMAL), capsys)
    assert "environment variable" in err and "JSON" in err


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pw@127.0.0.1:notaport/0",
        "redis://:s3cret-pw@127.0.0.1:99999/0",
        "redis://:s3cret-pw@127.0.0.1:6379/0?socket_timeout=soon",
        "http://:s3cret-pw@127.0.0.1:6379",
    ],
)
def test_an_unusable_redis_url_exits_3_without_its_password(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What redis-py would only refuse once the daemon runs (a traceback, exit 1)."""
    err = check_offline(write(tmp_path, MINIMAL + f'[cluster]\nredis_url = "{url}"\n'), capsys)
    assert "[cluster] redis_url" in err
    assert "s3cret-pw" not in err
