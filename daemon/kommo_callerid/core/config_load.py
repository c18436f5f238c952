"""Loading the configuration: one TOML file, ``KOMMO_CALLERID_<SECTION>__<KEY>`` env
overrides, and secrets from systemd credentials (``$CREDENTIALS_DIRECTORY``).

Every section forbids unknown keys, and a bad configuration is a :class:`ConfigError` whose
message names the file and the key, so the CLI can exit 3 with a sentence instead of a traceback.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_sources import ENV_PREFIX, ConfigError

__all__ = ["CONFIG_PATH_ENV", "DEFAULT_CONFIG_PATH", "ConfigError", "from_mapping", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/kommo-callerid/config.toml")
CONFIG_PATH_ENV = "KOMMO_CALLERID_CONFIG"
#: A configuration file is a few KiB; anything this big is something else put at its path.
MAX_CONFIG_BYTES = 1024 * 1024


def resolve_config_path(cli_path: str | None) -> Path:
    if cli_path:
        return Path(cli_path)
    return Path(os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Config:
    """Read, merge and validate; raise :class:`ConfigError` with a human message."""
    return _build(_read_toml(path), path)


def from_mapping(data: Mapping[str, Any]) -> Config:
    """A config built from a dict (demo, tests); env and credentials still apply."""
    return _build(data, Path("<built-in>"))


def _build(data: Mapping[str, Any], path: Path) -> Config:
    # BaseSettings reads underscore-prefixed keyword arguments as its own options.
    private = sorted(key for key in data if key.startswith("_"))
    if private:
        raise ConfigError(
            f"The configuration in {path} is not valid: [{private[0]}] is not a known section "
            "(check the spelling against config.example.toml)."
        )
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_env(exc)) from None


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most MAX_CONFIG_BYTES.

    Opened without blocking and checked before reading: a FIFO put at the config path would
    otherwise block the open (and with it every later SIGHUP, and the stop) until a writer
    came; a device would never end. ``OSError`` and ``ConfigError`` for the caller to word.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:  # a directory: IsADirectoryError, worded by the caller
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(
                f"The configuration file {path} is not a regular file (a FIFO, a socket or a "
                "device is there); it must be a TOML file."
            )
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"The configuration file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
            "a configuration is a few KiB (was something else saved there?)."
        )
    return data


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_regular_file(path).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"The configuration file {path} does not exist. Pass another one with -c PATH or "
            f"${CONFIG_PATH_ENV}; config.example.toml lists every key."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"The configuration file {path} cannot be read: {exc.strerror or exc}."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"The configuration file {path} is not UTF-8 text; a TOML file must be "
            "(was a binary or another encoding saved there?)."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The configuration file {path} is not valid TOML: {exc}.") from None


def _describe(exc: ValidationError, path: Path) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        section, _, key = where.partition(".")
        name = f"[{section}] {key}" if key else f"[{section}]"
        problems.append(f"{name} {_in_toml_words(error)}")
    return (
        f"The configuration in {path} is not valid: "
        + "; ".join(problems)
        + f". Values may also come from {ENV_PREFIX}<SECTION>__<KEY> environment variables."
    )


#: pydantic's error types in the words of a TOML file (its own speak of Python types).
_TOML_WORDS = {
    "extra_forbidden": "is not a known key (check the spelling against config.example.toml)",
    "missing": "is required",
    "finite_number": "must be a finite number (not inf or nan)",
    "tuple_type": 'must be a list, like ["a", "b"]',
    "list_type": 'must be a list, like ["a", "b"]',
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "string_type": 'must be a string (in quotes, like "text")',
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}
_BOUNDS = {
    "greater_than": ("gt", "must be more than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be less than"),
    "less_than_equal": ("le", "must be at most"),
}


def _in_toml_words(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in _TOML_WORDS:
        return _TOML_WORDS[kind]
    if kind in _BOUNDS:
        limit_key, words = _BOUNDS[kind]
        limit = (error.get("ctx") or {}).get(limit_key)
        if isinstance(limit, int | float):
            return f"{words} {int(limit) if limit == int(limit) else limit}"
        return error["msg"]
    message = error["msg"].removeprefix("Value error, ")
    return message.replace("Input should be", "must be")


def _describe_env(exc: SettingsError) -> str:
    cause = exc.__cause__ or exc.__context__
    return (
        f"An environment variable {ENV_PREFIX}<SECTION>__<KEY> cannot be read ({exc}"
        + (f": {cause}" if cause else "")
        + '). A list is a comma list (a,b) or JSON (["a","b"]); a table is JSON ({"key": 1}).'
    )
