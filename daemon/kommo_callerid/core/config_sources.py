"""Settings sources beyond the TOML file: environment variables (where a list may be a comma
list, as an operator would write it) and secrets from systemd credentials.

Precedence, highest first: environment, credentials, TOML file, defaults. A credential file
that cannot be read is a :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource

ENV_PREFIX = "KOMMO_CALLERID_"

#: systemd credential file name -> (section, key)
CREDENTIAL_FILES: Mapping[str, tuple[str, str]] = {
    "ami_secret": ("ami", "secret"),
    "kommo_access_token": ("kommo", "access_token"),
    "kommo_client_secret": ("kommo", "client_secret"),
    "kommo_refresh_token": ("kommo", "refresh_token"),
    "kommo_proxy": ("kommo", "proxy"),  # a proxy URL with its user:password
    "redis_password": ("cluster", "redis_password"),
    "recordings_key": ("recordings", "key"),
}
#: systemd credential file name -> (section, key) whose value is the file's path: a PEM key is
#: many lines, and the TLS code reads it (again on SIGHUP) from where it lies.
CREDENTIAL_PATHS: Mapping[str, tuple[str, str]] = {
    "public_tls_key": ("public", "tls_key"),
}
#: A PBX name: what ``[ami.NAME]``, ``ami_secret_NAME`` and ``NAME/KEY`` may use.
PBX_NAME = re.compile(r"[a-z0-9_-]+")
#: The credential file of one PBX's AMI secret: ``ami_secret_NAME``.
PBX_SECRET_PREFIX = "ami_secret_"  # noqa: S105  (a file name, not a secret)


class ConfigError(Exception):
    """A configuration a human has to fix; the message says what and where."""


class CredentialsSource(PydanticBaseSettingsSource):
    """Secrets from files in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        found: dict[str, Any] = {}
        if not directory:
            return found
        for name, (section, key) in CREDENTIAL_FILES.items():
            path = Path(directory) / name
            if path.is_file():
                found.setdefault(section, {})[key] = _read_credential(path)
        for name, (section, key) in CREDENTIAL_PATHS.items():
            path = Path(directory) / name
            if path.is_file():
                found.setdefault(section, {})[key] = str(path)
        for name, values in pbx_credentials(Path(directory)).items():
            found.setdefault("ami", {})[name] = values
        return found


class CredentialOnly(dict[str, str]):
    """A secret from ``ami_secret_NAME`` for a PBX neither the file nor the environment names.

    Merged into a configured ``[ami.NAME]`` it becomes a plain dict (the settings merge
    copies); left alone it is ignored, so a stale credential file never turns a PBX on.
    """


def pbx_credentials(directory: Path) -> dict[str, CredentialOnly]:
    """``ami_secret_NAME`` files -> ``{NAME: {"secret": ...}}`` (systemd ``LoadCredential=``)."""
    found: dict[str, CredentialOnly] = {}
    for path in sorted(directory.glob(PBX_SECRET_PREFIX + "*")):
        name = path.name.removeprefix(PBX_SECRET_PREFIX)
        if PBX_NAME.fullmatch(name) and path.is_file():
            found[name] = CredentialOnly(secret=_read_credential(path))
    return found


def _read_credential(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"The credential file {path} cannot be read: {exc.strerror or exc}. The service "
            "user needs read access (systemd LoadCredential= gives it)."
        ) from None
    try:
        value: str | None = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        value = None
    if value is None or not value.isprintable():  # also a binary file that decoded
        raise ConfigError(
            f"The credential file {path} is not one line of text: it must hold the secret "
            "alone (no binary data, no second line)."
        )
    return value


class CommaListEnvSource(EnvSettingsSource):
    """``KOMMO_CALLERID_CALLS__INBOUND_CONTEXTS=from-pstn,from-trunk`` is a list of two.

    JSON (``["from-pstn"]``) still works; only a value that is not JSON is split on commas,
    and only for a list-typed key.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            annotation = field.annotation if field is not None else None
            if isinstance(value, str) and get_origin(annotation) in (tuple, list):
                return [part.strip() for part in value.split(",") if part.strip()]
            raise
