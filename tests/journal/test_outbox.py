"""The outbox on a real SQLite file: written once, kept, bounded, private, checked at start."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from kommo_callerid.core.config import JournalConfig, NotifyConfig
from kommo_callerid.core.models import CallDirection, CallStatus
from kommo_callerid.journal.entry import State, build_entry, recording_link, responsible_user
from kommo_callerid.journal.outbox import AsyncOutbox, Outbox, OutboxError

from support import finished_call

NOTIFY = NotifyConfig(
    extensions={"100": 11, "north/100": 12, "200": 21}, dids={"5551000": (31, 32)}
)


def entry(linkedid: str, phone: str = "+18305803077", **kwargs: object):  # type: ignore[no-untyped-def]
    call = finished_call(linkedid, phone, **kwargs)  # type: ignore[arg-type]
    built = build_entry(call, JournalConfig(), NOTIFY, now=1_780_000_100.0)
    assert built is not None
    return built


def test_a_call_is_written_once_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    outbox = Outbox.open(path)
    written, refused = outbox.insert([entry("1.1"), entry("1.2"), entry("1.1")])
    assert [e.call_id for e in written] == ["1.1", "1.2"] and refused == []
    assert outbox.insert([entry("1.2")]) == ([], [])
    outbox.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Outbox.open(path)
    due = again.due(now=2e9, limit=10)
    assert [e.call_id for e in due] == ["1.1", "1.2"]
    assert due[0].status is CallStatus.ANSWERED and due[0].responsible_user_id == 11
    assert again.counts() == {"pending": 2, "sent": 0, "dropped": 0}


def test_the_outbox_is_bounded(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "j.sqlite3", capacity=3)
    written, refused = outbox.insert([entry(f"2.{n}") for n in range(5)])
    assert len(written) == 3 and refused == ["2.3", "2.4"]
    outbox.update([written[0].__class__(**{**_fields(written[0]), "state": State.SENT})])
    assert outbox.insert([entry("2.9")])[1] == []  # a sent record makes room


def _fields(e: object) -> dict[str, object]:
    return {name: getattr(e, name) for name in e.__dataclass_fields__}  # type: ignore[attr-defined]


def test_listing_retry_and_prune(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "j.sqlite3")
    written, _ = outbox.insert([entry("3.1"), entry("3.2")])
    dropped = written[1].__class__(**{**_fields(written[1]), "state": State.DROPPED})
    outbox.update([dropped])
    assert [e.call_id for e in outbox.listing()] == ["3.2", "3.1"]  # newest first
    assert [e.call_id for e in outbox.listing(states=[State.DROPPED])] == ["3.2"]
    assert outbox.retry_dropped(now=1_780_000_500.0) == 1
    assert outbox.counts()["pending"] == 2
    assert outbox.prune(before=2e9) == 0  # unsent records are never pruned


@pytest.mark.parametrize("damage", ["garbage", "read-only", "no-directory"])
def test_an_unusable_database_is_a_sentence(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "journal.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite database" * 200)
    elif damage == "read-only":
        Outbox.open(path).close()
        path.chmod(0o400)
    else:
        path = tmp_path / "missing" / "journal.sqlite3"
    if damage == "read-only" and os.geteuid() == 0:
        pytest.skip("root may write a read-only file")
    with pytest.raises(OutboxError) as raised:
        Outbox.open(path)
    message = str(raised.value)
    assert message.startswith(f"The call journal's database {path} cannot be used: ")
    assert message.endswith(".")


def test_responsible_user_and_link() -> None:
    inbound = finished_call("4.1", "+1830", answered_by="100", pbx="north")
    assert responsible_user(inbound, NOTIFY) == 12  # NAME/KEY beats the bare key
    missed = finished_call("4.2", "+1830", status=CallStatus.NO_ANSWER)
    assert responsible_user(missed, NOTIFY) == 31  # the DID's first user
    unknown_ext = finished_call("4.3", "+1830", answered_by="999", did="none")
    assert responsible_user(unknown_ext, NOTIFY) is None
    outbound = finished_call(
        "4.4", "+1830", direction=CallDirection.OUTBOUND, extension="200", answered_by="x"
    )
    assert responsible_user(outbound, NOTIFY) == 21
    template = "https://pbx/rec/{pbx}/{date}/{linkedid}-{uniqueid}.wav"
    assert recording_link(template, inbound).startswith("https://pbx/rec/north/2026/")
    assert recording_link("", inbound) == ""
    only_inbound = JournalConfig(directions=("inbound",))
    assert build_entry(outbound, only_inbound, NOTIFY, 0.0) is None


async def test_the_due_records_are_read_on_the_loop_while_the_writer_is_busy(
    tmp_path: Path,
) -> None:
    """The sender's read of the due records does not wait for the database thread (issue 22:
    every trip there held the loop up): it sees what the writer committed last, at once,
    even while the thread is busy; from a path a URI must quote."""
    folder = tmp_path / "journal #1 ?"
    folder.mkdir()
    outbox = AsyncOutbox(folder / "j.db")
    await outbox.open()
    try:
        written, _ = await outbox.insert([entry("3.1"), entry("3.2")])
        due, _ = outbox.due_or_next_try(2e9, 10)
        assert [e.call_id for e in due] == ["3.1", "3.2"]
        await outbox.update([replace(written[0], state=State.SENT)])
        release = threading.Event()
        held = asyncio.ensure_future(outbox._run(release.wait))  # the thread is busy now
        try:
            due, _ = outbox.due_or_next_try(2e9, 10)
            assert [e.call_id for e in due] == ["3.2"] and not held.done()
        finally:
            release.set()
            await held
        await outbox.update([replace(written[1], state=State.SENT)])
        assert outbox.due_or_next_try(2e9, 10) == ([], None)
    finally:
        await outbox.close()
