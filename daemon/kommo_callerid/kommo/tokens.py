"""The OAuth token pair on disk: read it, and replace it atomically and durably.

Kommo's refresh tokens are single-use: once a refresh has answered, the old refresh token
is dead and the new one exists only in that answer. So the new pair is written here before
anything else happens with it: a temporary file in the same directory (mode 0600), fsync,
rename over the old file, fsync of the directory. A crash at any point leaves either the
old file or the new one, never a torn one. An advisory lock beside the file keeps a second
process (``kommo-callerid lookup`` next to the running daemon) from refreshing at the same
time with the same refresh token.

One-shot commands often run as root (``sudo kommo-callerid check``) next to a daemon that
runs as its own (dynamic) user: a file or lock root creates or replaces takes the owner and
group of the file it replaces (or of its directory), so the service can still read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import SecretStr

#: Kommo's access tokens live a day; a year is beyond any grant we could trust.
MAX_EXPIRES_IN = 366 * 86400
MAX_TOKEN_CHARS = 8192
#: Refresh at most this long before the access token expires (Kommo's live for a day) ...
REFRESH_MARGIN = 300.0
#: ... and at most this share of its lifetime: a 60 s token (a test account, a proxy) is
#: refreshed after 45 s, not on every request as a fixed 300 s margin would have it.
REFRESH_SHARE = 0.25


class TokenFileError(Exception):
    """The token file cannot be read, parsed or written; the message says which and why."""

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        #: The file is there but this process cannot read it (ownership, mode, not a file).
        self.unreadable = unreadable


class TokenLockBusy(TokenFileError):
    """Another process held the lock for longer than we wait."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: SecretStr
    refresh_token: SecretStr
    #: Wall-clock (Unix) time the access token expires; 0 when unknown (refresh before use).
    expires_at: float
    #: Seconds the access token was granted for (``expires_in``); 0 when unknown (a pair
    #: saved by an older version): then the margin is :data:`REFRESH_MARGIN`.
    lifetime: float = 0.0

    @property
    def margin(self) -> float:
        """How long before ``expires_at`` this pair is refreshed."""
        if self.lifetime > 0:
            return min(REFRESH_MARGIN, REFRESH_SHARE * self.lifetime)
        return REFRESH_MARGIN

    def due(self, now: float) -> bool:
        """Time to refresh: within :attr:`margin` of expiring (or expired)."""
        return self.expires_at - now < self.margin

    @classmethod
    def from_grant(cls, grant: dict[str, Any], now: float) -> TokenPair:
        """A pair from Kommo's /oauth2/access_token answer; ValueError when it is not one."""
        access, refresh = grant.get("access_token"), grant.get("refresh_token")
        expires_in = grant.get("expires_in")
        if not (_usable_token(access) and _usable_token(refresh)):
            raise ValueError("the answer has no usable access_token/refresh_token")
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise ValueError("the answer has no numeric expires_in")
        if not 0 <= expires_in <= MAX_EXPIRES_IN:  # also refuses nan
            raise ValueError("the answer's expires_in is out of range")
        lifetime = float(expires_in)
        return cls(SecretStr(access), SecretStr(refresh), now + lifetime, lifetime)


def _usable_token(value: object) -> TypeGuard[str]:
    """A token goes into an HTTP header: printable ASCII without spaces, of a sane length."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOKEN_CHARS
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> TokenPair | None:
        """The saved pair, or None when there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenFileError(
                f"cannot read {self.path}: {exc.strerror or exc}", unreadable=True
            ) from None
        try:
            data = json.loads(raw)
            expires_at = float(data.get("expires_at", 0))
            lifetime = float(data.get("lifetime", 0))
            if not (math.isfinite(expires_at) and 0 <= lifetime <= MAX_EXPIRES_IN):
                raise ValueError("expires_at")
            return TokenPair(
                SecretStr(str(data["access_token"])),
                SecretStr(str(data["refresh_token"])),
                expires_at,
                lifetime,
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise TokenFileError(
                f"{self.path} is not a token file written by kommo-callerid; move it away and "
                "authorise again (see README, Kommo tokens)"
            ) from None

    def save(self, pair: TokenPair) -> None:
        """Replace the file with ``pair``: temp file, 0600, fsync, rename, fsync the directory."""
        body = json.dumps(
            {
                "access_token": pair.access_token.get_secret_value(),
                "refresh_token": pair.refresh_token.get_secret_value(),
                "expires_at": pair.expires_at,
                "lifetime": pair.lifetime,
                "saved_at": time.time(),
            }
        )
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            owner = _owner_to_keep(self.path)
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as exc:
            raise TokenFileError(f"cannot write in {directory}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o600)
                if owner is not None:
                    os.fchown(handle.fileno(), *owner)
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
            _fsync_directory(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise TokenFileError(f"cannot save {self.path}: {exc.strerror or exc}") from None

    @contextlib.asynccontextmanager
    async def locked(self, timeout: float = 10.0) -> AsyncIterator[None]:
        """Hold the advisory lock beside the file; polls without blocking the event loop."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            owner = _owner_to_keep(lock_path)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise TokenFileError(
                f"cannot open the lock {lock_path}: {exc.strerror or exc}",
                unreadable=isinstance(exc, PermissionError),
            ) from None
        try:
            if owner is not None:
                with contextlib.suppress(OSError):  # best effort: a lock is no secret
                    os.fchown(fd, *owner)
            deadline = time.monotonic() + timeout
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise TokenLockBusy(f"{lock_path} is held by another kommo-callerid process")
                await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _owner_to_keep(path: Path) -> tuple[int, int] | None:
    """Running as root: the (uid, gid) a new ``path`` must get so the service can still use
    it — that of the file it replaces, else of its directory. None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        found = os.stat(path.parent)
    return found.st_uid, found.st_gid


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
