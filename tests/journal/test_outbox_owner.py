"""`sudo kommo-callerid journal retry` must not leave the outbox unwritable to the service.

SQLite itself gives the -wal and -shm files it creates as root the database file's owner
(unix VFS, robust_open/osFchown), and the commands never create the database: this test holds
that guarantee in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kommo_callerid.journal.outbox import Outbox

SERVICE = (4242, 4242)  # the DynamicUser's uid/gid stand-in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def _owners(path: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        candidate = path.with_name(name)
        if candidate.exists():
            stat = candidate.stat()
            found[name] = (stat.st_uid, stat.st_gid)
    return found


def test_root_keeps_the_service_owner_of_every_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "journal.sqlite3"
    Outbox.open(database).close()  # the service created it ...
    os.chown(database, *SERVICE)  # ... as its own user

    outbox = Outbox.open(database, create=False)  # now root runs `journal retry`
    outbox.retry_dropped(now=0.0)
    while_open = _owners(database)
    outbox.close()

    assert set(while_open) >= {database.name, database.name + "-wal", database.name + "-shm"}
    assert set(while_open.values()) == {SERVICE}
    assert set(_owners(database).values()) == {SERVICE}
