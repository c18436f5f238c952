"""Shared test helpers: a daemon wired to the fake AMI server and the fake Kommo."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.core.models import CallDirection, CallStatus, FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

#: The repository root and the recorded AMI traffic the tests replay.
ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT / "tests" / "data" / "ami-recordings"

#: The call journal is on by default and its default database is under /var/lib: every test
#: daemon gets its own database in one temporary folder, removed when the tests end.
_JOURNALS = Path(tempfile.mkdtemp(prefix="kommo-callerid-tests-"))
atexit.register(shutil.rmtree, _JOURNALS, True)
_journal_numbers = itertools.count(1)


def temp_journal() -> str:
    """A fresh journal database path for one test daemon."""
    return str(_JOURNALS / f"journal-{next(_journal_numbers)}.sqlite3")


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but never listening, so connecting to it is refused. It stays
    bound while the test runs: a port merely closed again may be handed to another listener
    meanwhile (seen once in CI: a "dead" proxy answered 407)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port


def make_config(ami: FakeAmiServer, kommo: FakeKommo, /, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "ami": {
            "port": ami.port,
            "username": DEMO_USERNAME,
            "secret": DEMO_SECRET,
            "reconnect_min": 0.05,
            "reconnect_max": 0.2,
        },
        "kommo": {"base_url": kommo.base_url, "access_token": kommo.token},
        "notify": {"fallback_after": 0.3},
        "daemon": {"shutdown_timeout": 2.0},
        "journal": {"database": temp_journal()},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(data)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[Daemon]:
    """A daemon that is logged in to the fake AMI; stopped (exit 0 asserted) on exit."""
    daemon = Daemon(config)
    serving = asyncio.create_task(daemon.serve())
    try:
        await wait_for(lambda: daemon.ami_connected or serving.done())
        yield daemon
    finally:
        daemon.stop.set()
        assert await serving == EXIT_OK


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    """The captured log lines of one event."""
    return [line for line in logs if line["event"] == name]


class ManualClock:
    """Time that moves only when a test (or a limiter's sleep) moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


#: The uid/gid of ``nobody``: a user that owns nothing here.
NOBODY = 65534


def run_as_nobody(action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child that dropped to nobody (the test runs as root); what
    it returned or raised, as text: ``"ok: ..."`` or ``"ErrorName: message"``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery beyond this point
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            verdict = f"ok: {action()!r}"
        except BaseException as exc:  # the verdict is whatever came out
            verdict = f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"
        os.write(write_end, verdict.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        verdict = pipe.read().decode()
    os.waitpid(pid, 0)
    return verdict


def finished_call(
    linkedid: str,
    phone: str,
    *,
    status: CallStatus = CallStatus.ANSWERED,
    direction: CallDirection = CallDirection.INBOUND,
    duration: int = 42,
    answered_by: str | None = "100",
    did: str | None = "5551000",
    extension: str | None = None,
    started_at: float = 1_780_000_000.0,
    pbx: str = "",
) -> FinishedCall:
    """A hand-built finished call, as the outcome tracker makes them (journal tests)."""
    answered = status is CallStatus.ANSWERED
    return FinishedCall(
        call_id=f"{pbx}/{linkedid}" if pbx else linkedid,
        pbx=pbx,
        linkedid=linkedid,
        uniqueid=linkedid,
        direction=direction,
        phone=phone,
        started_at=started_at,
        duration=duration if answered else 0,
        status=status,
        answered_by=answered_by if answered else None,
        extension=extension,
        did=did if direction is CallDirection.INBOUND else None,
        result=f"answered by {answered_by}" if answered else "caller hung up after 20 s",
    )


def on_disk(outbox: Any) -> dict[str, int]:
    """An outbox's records per state, read from its file by a connection of the test's own
    (``AsyncOutbox`` keeps only the unsent count: the full count scans the history)."""
    from kommo_callerid.journal.outbox import Outbox

    reader = Outbox.open(outbox.path, create=False)
    try:
        return reader.counts()
    finally:
        reader.close()
