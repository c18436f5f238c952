"""Whose phone rings: a Kommo user's extension, and the PBX it is on.

``[clicktocall.users]`` first; else the one key of ``[notify.extensions]`` that names the
user (none or several: no extension, the user gets 403 until an operator says which). The
browser never names an extension. With several PBXs an extension must say its PBX
(``north/101``): a bare one could be on any of them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kommo_callerid.core.config import EXTENSION


@dataclass(frozen=True, slots=True)
class Target:
    pbx: str
    extension: str

    def __str__(self) -> str:
        return f"{self.pbx}/{self.extension}" if self.pbx else self.extension


class NoExtension(LookupError):
    """The user has no usable extension; the message says why."""


def extension_of(
    user_id: int,
    users: Mapping[int, str],
    notify_extensions: Mapping[str, int],
    pbxs: Collection[str],
) -> Target:
    """The user's extension; raises :class:`NoExtension`."""
    key = users.get(user_id)
    if key is None:
        named = [ext for ext, user in notify_extensions.items() if user == user_id]
        if len(named) != 1:
            why = "names several" if named else "names none"
            raise NoExtension(f"[clicktocall.users] has no entry and [notify.extensions] {why}")
        key = named[0]
    return _target(key, pbxs)


def _target(key: str, pbxs: Collection[str]) -> Target:
    if not EXTENSION.fullmatch(key):
        raise NoExtension(f"{key!r} is not an extension the daemon dials")
    pbx, slash, extension = key.rpartition("/")
    if slash:
        if pbx not in pbxs:
            raise NoExtension(f"{key!r} names a PBX that is not configured")
        return Target(pbx, extension)
    named = [name for name in pbxs if name]
    if named:
        if len(named) > 1:
            raise NoExtension(f"{key!r} does not say its PBX (write NAME/{key})")
        return Target(named[0], extension)
    return Target("", extension)
