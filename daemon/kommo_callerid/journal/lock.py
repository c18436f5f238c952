"""One daemon per outbox: an exclusive ``flock`` on a lock file beside the database, held
for the daemon's life.

Why: two daemons on one outbox file each send every record that is due, so every retried
record reached Kommo twice (issue 18). SQLite's own locks only order transactions; they do not
say "this file is mine".

Why a lock file beside the database (``journal.sqlite3.lock``), not ``flock`` on the database
itself: SQLite holds POSIX (``fcntl``) locks on the database, and closing any other descriptor
of that file in the process drops them all; a separate file cannot interfere. ``flock`` (not
``fcntl``) because it belongs to the open file, so the kernel releases it when the process
dies however it dies (SIGKILL included), and a second open in the same process conflicts too.
The commands (``kommo-callerid journal``) do not take it: they are meant to run beside the
daemon, and SQLite orders their writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

#: The lock file may be created by root (a daemon started by hand); the service's user must
#: still open it to take the lock, and it holds nothing.
LOCK_MODE = 0o644


class OutboxHeld(Exception):
    """Another process holds the outbox; the message is a sentence for the operator."""


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class OutboxLock:
    """The held lock; :meth:`release` (or the process's end) gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, database: Path) -> OutboxLock:
        """Take the lock of ``database``'s outbox. :class:`OutboxHeld` when another process
        has it; :class:`OSError` when the lock file cannot be made (a missing directory, no
        permission: the database itself would fail the same way)."""
        path = lock_path(database)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
        try:
            with contextlib.suppress(OSError):  # only the owner may; the umask narrowed it
                os.fchmod(fd, LOCK_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutboxHeld(
                    f"The call journal's database {database} is in use by another "
                    f"kommo-callerid daemon (it holds {path}); stop that daemon, or give each "
                    "daemon its own [journal] database."
                ) from None
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock back (a second call does nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock
