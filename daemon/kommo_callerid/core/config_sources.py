"""Settings sources beyond the TOML file: secrets from systemd credentials.

Precedence, highest first: environment, credentials, TOML file, defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

ENV_PREFIX = "KOMMO_CALLERID_"

#: systemd credential file name -> (section, key)
CREDENTIAL_FILES: Mapping[str, tuple[str, str]] = {
    "ami_secret": ("ami", "secret"),
    "kommo_access_token": ("kommo", "access_token"),
    "kommo_client_secret": ("kommo", "client_secret"),
    "kommo_refresh_token": ("kommo", "refresh_token"),
    "kommo_proxy": ("kommo", "proxy"),  # a proxy URL with its user:password
    "redis_password": ("cluster", "redis_password"),
}


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
                value = path.read_text(encoding="utf-8").strip()
                found.setdefault(section, {})[key] = value
        return found
