"""Loading the configuration: one TOML file, ``KOMMO_CALLERID_<SECTION>__<KEY>`` env
overrides, and secrets from systemd credentials (``$CREDENTIALS_DIRECTORY``).

Every section forbids unknown keys, and a bad configuration is a :class:`ConfigError` whose
message names the file and the key, so the CLI can exit 3 with a sentence instead of a traceback.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_sources import ENV_PREFIX, ConfigError

__all__ = ["CONFIG_PATH_ENV", "DEFAULT_CONFIG_PATH", "ConfigError", "from_mapping", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/kommo-callerid/config.toml")
CONFIG_PATH_ENV = "KOMMO_CALLERID_CONFIG"


def resolve_config_path(cli_path: str | None) -> Path:
    if cli_path:
        return Path(cli_path)
    return Path(os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Config:
    """Read, merge and validate; raise :class:`ConfigError` with a human message."""
    data = _read_toml(path)
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def from_mapping(data: Mapping[str, Any]) -> Config:
    """A config built from a dict (demo, tests); env and credentials still apply."""
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, Path("<built-in>"))) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"The configuration file {path} does not exist. Pass another one with -c PATH or "
            f"${CONFIG_PATH_ENV}; config.example.toml lists every key."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"The configuration file {path} cannot be read: {exc.strerror}."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The configuration file {path} is not valid TOML: {exc}.") from None


def _describe(exc: ValidationError, path: Path) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        section, _, key = where.partition(".")
        name = f"[{section}] {key}" if key else f"[{section}]"
        if error["type"] == "extra_forbidden":
            message = "is not a known key (check the spelling against config.example.toml)"
        elif error["type"] == "missing":
            message = "is required"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{name} {message}")
    return (
        f"The configuration in {path} is not valid: "
        + "; ".join(problems)
        + f". Values may also come from {ENV_PREFIX}<SECTION>__<KEY> environment variables."
    )
