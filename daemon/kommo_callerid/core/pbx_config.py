"""Several PBXs: the ``[ami.NAME]`` tables, merged over the ``[ami]`` defaults.

One unnamed ``[ami]`` is one PBX named "" and behaves as before any PBX had a name. As soon
as one ``[ami.NAME]`` table exists, the keys set directly under ``[ami]`` are only defaults:
every PBX is a named table (its secret from ``secret`` or the credential file
``ami_secret_NAME``, else ``ami_secret``). A PBX may override ``[calls] inbound_contexts`` and
``outbound_contexts``. Keys of ``[notify.extensions]`` / ``[notify.dids]`` may be
``NAME/KEY``; a NAME no PBX has is a configuration error, not a silently dead mapping.

The merge runs inside the settings validation (:func:`validate_with_pbxs`), after the
environment (``KOMMO_CALLERID_AMI__NORTH__HOST``) and credentials have been merged in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails

from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.config_sources import PBX_NAME, CredentialOnly

if TYPE_CHECKING:
    from kommo_callerid.core.config import Config

#: Keys a ``[ami.NAME]`` table may set beyond ``[ami]``'s own.
CONTEXT_KEYS = ("inbound_contexts", "outbound_contexts")


@dataclass(frozen=True, slots=True)
class PbxConfig:
    """One PBX the daemon watches: its AMI link and the contexts its calls start in."""

    #: "" for the one unnamed ``[ami]``.
    name: str
    ami: AmiConfig
    inbound_contexts: tuple[str, ...]
    outbound_contexts: tuple[str, ...]

    @property
    def label(self) -> str:
        """How logs and reports name it: ``north``, or ``[ami]`` for the unnamed one."""
        return self.name or "[ami]"


class _PbxTable(AmiConfig):
    """One ``[ami.NAME]`` table after the ``[ami]`` defaults were merged in."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    inbound_contexts: tuple[str, ...] | None = None
    outbound_contexts: tuple[str, ...] | None = None


class _PbxTables(BaseModel):
    """Validates every named table at once, so errors carry ``ami.NAME.KEY`` locations."""

    ami: dict[str, _PbxTable]


def validate_with_pbxs(data: Any, build: Callable[[Any], Config]) -> Config:
    """Split the named tables off ``[ami]``, build the config, then attach its PBXs."""
    if not isinstance(data, Mapping) or not isinstance(data.get("ami"), Mapping):
        config = build(data)  # a Config, or an AmiConfig object given in code
        return config if config.pbxs else _attach(config, (_unnamed(config),))
    defaults = {k: v for k, v in data["ami"].items() if not isinstance(v, Mapping)}
    named = {
        k: v
        for k, v in data["ami"].items()
        if isinstance(v, Mapping) and not isinstance(v, CredentialOnly)
    }
    if not named:
        config = build({**data, "ami": defaults})
        return _attach(config, (_unnamed(config),))
    _check_names(named)
    # [ami] holds only defaults now: each named table needs a secret, [ami] itself does not.
    config = build({**data, "ami": {"secret": "", **defaults}})
    return _attach(config, _named(config, defaults, named))


def _unnamed(config: Config) -> PbxConfig:
    calls = config.calls
    return PbxConfig("", config.ami, calls.inbound_contexts, calls.outbound_contexts)


def _named(
    config: Config, defaults: Mapping[str, Any], named: Mapping[str, Mapping[str, Any]]
) -> tuple[PbxConfig, ...]:
    merged = {name: {**defaults, **table} for name, table in named.items()}
    tables = _PbxTables.model_validate({"ami": merged}).ami  # errors name ami.NAME.KEY
    return tuple(_pbx(config, name, tables[name]) for name in sorted(tables))


def _pbx(config: Config, name: str, table: _PbxTable) -> PbxConfig:
    ami = AmiConfig.model_validate(dict(table.model_dump(exclude=set(CONTEXT_KEYS))))
    inbound = table.inbound_contexts
    outbound = table.outbound_contexts
    return PbxConfig(
        name,
        ami,
        config.calls.inbound_contexts if inbound is None else inbound,
        config.calls.outbound_contexts if outbound is None else outbound,
    )


def _attach(config: Config, pbxs: tuple[PbxConfig, ...]) -> Config:
    _check_mapping_keys(config, {pbx.name for pbx in pbxs})
    config._pbxs = pbxs  # set once, here, while the config is being validated
    return config


def _check_names(named: Mapping[str, Any]) -> None:
    errors = []
    for name in named:
        if not PBX_NAME.fullmatch(name):
            why = "is not a PBX name: use lower-case letters, digits, - and _"
        elif name in AmiConfig.model_fields:
            why = f"is not a PBX name: {name} is a key of [ami]"
        else:
            continue
        errors.append(_error(("ami", name), why, name))
    if errors:
        raise ValidationError.from_exception_data("Config", errors)


def _check_mapping_keys(config: Config, names: set[str]) -> None:
    """A ``NAME/KEY`` naming no configured PBX would never match: say so at start-up."""
    errors = [
        _error(("notify", section, key), _unknown_pbx(names), key)
        for section, key in _mapping_keys(config)
        if "/" in key and key.partition("/")[0] not in names - {""}
    ]
    if errors:
        raise ValidationError.from_exception_data("Config", errors)


def _mapping_keys(config: Config) -> Iterator[tuple[str, str]]:
    yield from (("extensions", key) for key in config.notify.extensions)
    yield from (("dids", key) for key in config.notify.dids)


def _unknown_pbx(names: set[str]) -> str:
    known = ", ".join(sorted(names - {""})) or "none: name them with [ami.NAME] tables"
    return f"names no configured PBX (PBXs: {known})"


def _error(loc: tuple[str, ...], message: str, value: Any) -> InitErrorDetails:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


@dataclass(frozen=True, slots=True)
class PbxReload:
    """SIGHUP with several PBXs: what the running links keep and what changed."""

    #: The running PBXs: their AMI settings as started, their contexts from the new file.
    pbxs: tuple[PbxConfig, ...]
    applied: tuple[str, ...]
    restart_needed: tuple[str, ...]


def reload_pbxs(old: Config, new: Config) -> PbxReload:
    """A link keeps its AMI keys until a restart (``ami.NAME.KEY``, a PBX added or removed:
    ``ami.NAME``); a PBX's contexts apply at once. The unnamed ``[ami]``'s keys and the
    ``[calls]`` contexts are the reload's own business (``ami.KEY``, ``calls.KEY``)."""
    fresh = {pbx.name: pbx for pbx in new.pbxs}
    running: list[PbxConfig] = []
    applied: list[str] = []
    fixed: list[str] = []
    for pbx in old.pbxs:
        new_pbx = fresh.pop(pbx.name, None)
        if new_pbx is None:
            fixed.append(_section_key(pbx.name))
            running.append(pbx)
            continue
        if pbx.name:
            fixed.extend(_changed_ami_keys(pbx, new_pbx))
            applied.extend(
                f"ami.{pbx.name}.{key}"
                for key in CONTEXT_KEYS
                if getattr(pbx, key) != getattr(new_pbx, key)
            )
        contexts = {key: getattr(new_pbx, key) for key in CONTEXT_KEYS}
        running.append(replace(pbx, **contexts))
    fixed.extend(_section_key(name) for name in fresh)  # PBXs the new file adds
    return PbxReload(tuple(running), tuple(applied), tuple(fixed))


def with_pbxs(config: Config, pbxs: tuple[PbxConfig, ...]) -> Config:
    """A copy of ``config`` whose PBXs are ``pbxs`` (what the running links use)."""
    copy = config.model_copy()
    copy._pbxs = pbxs  # the copy is ours until returned
    return copy


def _changed_ami_keys(old: PbxConfig, new: PbxConfig) -> list[str]:
    return [
        f"ami.{old.name}.{key}"
        for key in type(old.ami).model_fields
        if getattr(old.ami, key) != getattr(new.ami, key)
    ]


def _section_key(name: str) -> str:
    return f"ami.{name}" if name else "ami"
