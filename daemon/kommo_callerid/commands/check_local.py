"""The local half of ``kommo-callerid check`` (also with ``--offline``): this host's files,
contacting nothing. Warnings only — each says what to change: example values left in the
configuration, credential or token files other users may read or write, secrets written into
a world-readable configuration file, a call journal database the daemon could not use;
and whether ``[recordings] directory`` can be read (a failure: without it no call gets a link).
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config

#: Values config.example.toml ships that mean "not edited yet".
PLACEHOLDERS = frozenset({"change-me", "changeme", "...", ""})
EXAMPLE_BASE_URL = "https://example.kommo.com"
#: Keys that hold a secret: better in a credential file than in config.toml.
SECRET_KEYS = (
    ("ami", "secret"),
    ("kommo", "access_token"),
    ("kommo", "client_secret"),
    ("kommo", "refresh_token"),
    ("cluster", "redis_password"),
    ("recordings", "key"),
)
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def check_local(config: Config, config_path: Path, report: Report) -> None:
    report.heading("Local checks:")
    before = report.warnings
    _example_values(config, report)
    _credential_files(config_path, report)
    _inline_secrets(config_path, report)
    _token_file(config, report)
    _journal_database(config, report)
    if report.warnings == before:
        report.ok("files: no example values, credentials and tokens readable by their owner only")
    _recordings(config, report)


def _example_values(config: Config, report: Report) -> None:
    for pbx in config.pbxs:  # with [ami.NAME] tables, each PBX's own secret
        if pbx.ami.secret.get_secret_value() in PLACEHOLDERS:
            section, credential = (
                (f"[ami.{pbx.name}]", f"ami_secret_{pbx.name}")
                if pbx.name
                else ("[ami]", "ami_secret")
            )
            report.warn(
                f"{section} secret is still the example value",
                "set it to the secret of the AMI user in /etc/asterisk/manager.conf "
                f"(better: in the {credential} credential file)",
            )
    token = config.kommo.access_token.get_secret_value()
    if not config.kommo.oauth and token in PLACEHOLDERS:
        report.warn(
            "[kommo] access_token is still the example value",
            "paste the long-lived token of your private integration (Kommo: Settings > "
            "Integrations > Keys and scopes), better into the kommo_access_token credential file",
        )
    if config.kommo.base_url == EXAMPLE_BASE_URL:
        report.warn(
            f"[kommo] base_url is still the example {EXAMPLE_BASE_URL}",
            "set it to https://<subdomain>.kommo.com, the address you open Kommo at",
        )


def _credential_directory(config_path: Path) -> Path:
    found = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(found) if found else config_path.parent / "credentials"


def _credential_files(config_path: Path, report: Report) -> None:
    directory = _credential_directory(config_path)
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return  # no credential files: nothing to judge
    for entry in entries:
        mode = _mode(Path(entry.path))
        if mode is not None and stat.S_ISREG(mode) and mode & _OTHERS:
            report.warn(
                f"credential file {entry.path} may be read by other users "
                f"(mode {stat.S_IMODE(mode):04o})",
                f"chmod 600 {entry.path} (systemd's LoadCredential= reads it as root)",
            )


def _inline_secrets(config_path: Path, report: Report) -> None:
    mode = _mode(config_path)
    if mode is None or not mode & stat.S_IROTH:
        return
    raw = _raw_toml(config_path)
    inline = [
        f"[{section}] {key}"
        for section, key in SECRET_KEYS
        if isinstance(raw.get(section), dict) and raw[section].get(key)
    ]
    ami = raw["ami"] if isinstance(raw.get("ami"), dict) else {}
    inline += [
        f"[ami.{name}] secret"
        for name, table in ami.items()
        if isinstance(table, dict) and table.get("secret")
    ]
    proxy = raw.get("kommo", {}).get("proxy") if isinstance(raw.get("kommo"), dict) else None
    if isinstance(proxy, str) and _has_password(proxy):
        inline.append("[kommo] proxy's password")
    if inline:
        report.warn(
            f"{config_path} is readable by every user (mode {stat.S_IMODE(mode):04o}) and "
            f"holds {', '.join(inline)}",
            "move secrets to credential files (see README: systemd LoadCredential=) and "
            "delete them from the file",
        )


def _token_file(config: Config, report: Report) -> None:
    if not config.kommo.oauth:
        return
    path = config.kommo.token_file
    mode = _mode(path)
    if mode is None:
        return
    if mode & stat.S_IWOTH:
        report.warn(
            f"the OAuth token file {path} may be written by every user "
            f"(mode {stat.S_IMODE(mode):04o}): anyone could plant tokens",
            f"chmod 600 {path}",
        )
    elif mode & (stat.S_IRGRP | stat.S_IROTH):
        report.warn(
            f"the OAuth token file {path} may be read by other users "
            f"(mode {stat.S_IMODE(mode):04o})",
            f"chmod 600 {path}",
        )
    directory_mode = _mode(path.parent)
    if directory_mode is not None and directory_mode & stat.S_IWOTH:
        report.warn(
            f"{path.parent} (the token file's directory) may be written by every user",
            f"chmod 700 {path.parent}",
        )


def _recordings(config: Config, report: Report) -> None:
    """``[recordings] directory``: there, and readable (and searchable) by whoever runs the
    check — run it as the service user (``sudo -u kommo-callerid``) for the daemon's view."""
    directory = config.recordings.directory
    if directory is None:
        return
    fix = (
        "set [recordings] directory to Asterisk's monitor directory, and let the service "
        "read it (the .deb's unit: SupplementaryGroups=asterisk, ReadOnlyPaths=)"
    )
    if not directory.is_dir():
        report.fail(f"[recordings] directory {directory} does not exist", fix)
    elif not os.access(directory, os.R_OK | os.X_OK):
        report.fail(f"[recordings] directory {directory} is not readable by this user", fix)
    else:
        report.ok(f"recordings: {directory} is readable")
    key_file = config.kommo.token_file.parent / "recordings.key"
    mode = _mode(key_file)
    if not config.recordings.key.get_secret_value() and mode is not None and mode & _OTHERS:
        report.warn(
            f"the recordings signing key {key_file} may be read by other users "
            f"(mode {stat.S_IMODE(mode):04o}): they could sign links to any recording",
            f"chmod 600 {key_file}, then delete it and restart to rotate the key",
        )


def _journal_database(config: Config, report: Report) -> None:
    """The daemon runs without a usable journal database (caller ID goes on), but finished
    calls then only wait in memory: say so before ``run`` does."""
    if not config.journal.enabled:
        return
    path = config.journal.database
    folder = path.parent
    if not folder.is_dir():
        report.warn(
            f"the call journal's directory {folder} does not exist: finished calls would only "
            "wait in memory",
            f"install -d -m 0700 {folder} (as the user the daemon runs as; the .deb and the "
            "unit's StateDirectory= make /var/lib/kommo-callerid)",
        )
    elif not os.access(folder, os.W_OK | os.X_OK):
        report.warn(
            f"the call journal's directory {folder} may not be written by this user",
            f"run check as the daemon's user, or give it the directory (chown, chmod 700 {folder})",
        )
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        report.warn(
            f"the call journal's database {path} may not be read and written by this user",
            f"chown it to the daemon's user and chmod 600 {path}",
        )
    elif path.exists() and not _looks_like_sqlite(path):
        report.warn(
            f"the call journal's database {path} is not an SQLite database",
            f"move it aside (mv {path} {path}.broken); the daemon makes a new one",
        )


def _looks_like_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return head in (b"", b"SQLite format 3\x00")


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _raw_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, ValueError):
        return {}
