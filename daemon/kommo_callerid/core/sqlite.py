"""SQLite helpers shared by the stores that keep state on disk (the journal's outbox, the
phone book's mirror)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken at the start (``BEGIN IMMEDIATE``: no upgrade
    from a read lock that another writer could make fail halfway); rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
