"""The sync against the fake Kommo's list endpoints, over real sockets: a first full pass,
incremental changes within sync_interval + 3 s, deletions at the next full pass, idle cost,
an outage, a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from phonebook_helpers import by_phone, now, synced, touched
from structlog.testing import capture_logs

from kommo_callerid.core.config import PhonebookConfig
from kommo_callerid.daemon.phonebook import MirrorFirst
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, FakeKommo
from kommo_callerid.sim.kommo_data import FakeContact, demo_dataset

from support import events, wait_for

JOHN = "18305803077"
MARIA = "14155550199"  # one active lead (3001)
WEI = "442079460958"  # one customer
NEW = "13105550111"


async def test_first_full_pass_then_idle_costs_one_request_per_kind(tmp_path: Path) -> None:
    async with FakeKommo(demo_dataset()) as fake:
        with capture_logs() as logs:
            async with synced(fake, tmp_path / "pb.sqlite3") as parts:
                await wait_for(lambda: len(events(logs, "phonebook.synced")) >= 3, timeout=10)
                lines = events(logs, "phonebook.synced")
                for number in (JOHN, MARIA, WEI, "12125550142", "74951234567", "15550000000"):
                    assert parts.book.find(number) == by_phone(fake.dataset, number), number
    first, idle = lines[0], lines[1:3]
    assert first["full"] is True and first["entries"] == 6
    assert [line["full"] for line in idle] == [False, False]
    assert all(line["requests"] <= 4 for line in idle), idle  # idle: one request per kind
    assert fake.requests_to(BY_PHONE_PATH) == 0


async def test_new_closed_and_renamed_are_seen_within_interval_plus_3_s(tmp_path: Path) -> None:
    async with (
        FakeKommo(demo_dataset()) as fake,
        synced(fake, tmp_path / "pb.sqlite3", interval=1.0) as parts,
    ):
        await wait_for(lambda: parts.book.complete, timeout=10)
        data = fake.dataset
        stamp = now()
        leads = tuple(
            touched(lead, active=False, updated_at=stamp) if lead.id == 3001 else lead
            for lead in data.leads
        )
        contacts = (
            *(
                touched(c, name="Wei Chen Jr", updated_at=stamp) if c.id == 1003 else c
                for c in data.contacts
            ),
            FakeContact(1099, "New Caller", (NEW,), 8320148, stamp, stamp),
        )
        fake.dataset = touched(data, leads=leads, contacts=contacts)
        changed_at = time.monotonic()

        def seen() -> bool:
            return all(parts.book.find(n) == by_phone(fake.dataset, n) for n in (NEW, MARIA, WEI))

        await wait_for(seen, timeout=1.0 + 3.0)
        took = time.monotonic() - changed_at
    assert took <= 4.0
    found = by_phone(fake.dataset, MARIA)
    assert found is not None and found[0].type == "contact"  # the closed lead no longer answers


async def test_a_deleted_contact_is_gone_after_the_next_full_pass(tmp_path: Path) -> None:
    async with (
        FakeKommo(demo_dataset()) as fake,
        synced(fake, tmp_path / "pb.sqlite3", run=False) as parts,
    ):
        await parts.sync.sync_once(full=True)
        assert parts.book.find(JOHN) is not None
        data = fake.dataset
        fake.dataset = touched(data, contacts=tuple(c for c in data.contacts if c.id != 1001))
        await parts.sync.sync_once(full=False)
        assert parts.book.find(JOHN) is not None  # deletions leave no trace to sync from
        outcome = await parts.sync.sync_once(full=True)
        assert parts.book.find(JOHN) is None
    assert outcome.removed == 1


async def test_a_deletion_mid_pass_forgets_no_neighbour(tmp_path: Path) -> None:
    """A contact deleted after the pass read its page shifts the next page one place up: the
    record that moved into the page already read is not seen, yet still in Kommo."""
    contacts = tuple(
        FakeContact(id_, f"Caller {id_}", (f"1555{id_:07d}",), 8320148, 1_700_000_000 + id_)
        for id_ in range(1, 301)
    )
    async with (
        FakeKommo(touched(demo_dataset(), contacts=contacts)) as fake,
        synced(fake, tmp_path / "pb.sqlite3", run=False) as parts,
    ):
        await parts.sync.sync_once(full=True)
        assert parts.book.find("15550000251") is not None

        def delete_after_the_first_contacts_page(token: str) -> None:
            read = [r for r in fake.requests if r.path == "/api/v4/contacts"]
            if len(read) == first_pass + 1 and any(c.id == 10 for c in fake.dataset.contacts):
                remaining = tuple(c for c in fake.dataset.contacts if c.id != 10)
                fake.dataset = touched(fake.dataset, contacts=remaining)

        first_pass = sum(1 for r in fake.requests if r.path == "/api/v4/contacts")
        fake.on_authorised = delete_after_the_first_contacts_page
        outcome = await parts.sync.sync_once(full=True)
        found = parts.book.find("15550000251")
        assert outcome.removed == 0  # (the deleted one was read before it went)
        assert found is not None and found[0].id == 251
        again = await parts.sync.sync_once(full=True)
        assert parts.book.find("15550000010") is None
        assert parts.book.find("15550000251") is not None
    assert again.removed == 1


async def test_kommo_down_known_callers_still_named_and_error_logged(tmp_path: Path) -> None:
    async with FakeKommo(demo_dataset()) as fake:
        with capture_logs() as logs:
            async with synced(fake, tmp_path / "pb.sqlite3") as parts:
                await wait_for(lambda: parts.book.complete, timeout=10)
                fake.outage(503, 60.0)
                await wait_for(lambda: bool(events(logs, "phonebook.error")), timeout=10)
                front = MirrorFirst(
                    parts.kommo, parts.book, PhonebookConfig(), clock=time.monotonic
                )
                result = await front.lookup(JOHN)
    assert result.entity is not None and result.entity.name == "John Doe"
    assert result.source == "phonebook"
    error = events(logs, "phonebook.error")[0]
    assert error["retry_in"] > 0 and "503" in str(error.get("status")) + error["detail"]
    assert fake.requests_to(BY_PHONE_PATH) == 0


async def test_after_a_restart_the_first_sync_is_incremental(tmp_path: Path) -> None:
    database = tmp_path / "pb.sqlite3"
    async with FakeKommo(demo_dataset()) as fake:
        async with synced(fake, database, run=False) as parts:
            await parts.sync.sync_once(full=True)
        with capture_logs() as logs:
            async with synced(fake, database) as parts:
                assert parts.book.find(JOHN) is not None  # answers before any request
                await wait_for(lambda: bool(events(logs, "phonebook.synced")), timeout=10)
    assert events(logs, "phonebook.synced")[0]["full"] is False
    assert database.stat().st_mode & 0o777 == 0o600


async def test_customers_switched_off_are_skipped(tmp_path: Path) -> None:
    async with FakeKommo(demo_dataset()) as fake:
        fake.customers_enabled = False
        with capture_logs() as logs:
            async with synced(fake, tmp_path / "pb.sqlite3", run=False) as parts:
                await parts.sync.sync_once(full=True)
                await parts.sync.sync_once(full=False)
                assert parts.book.counts["customers"] == 0
    assert fake.requests_to("/api/v4/customers") == 1  # asked once, then skipped
    assert len(events(logs, "phonebook.error")) == 1


async def test_unknown_numbers_trust_a_fresh_mirror_only(tmp_path: Path) -> None:
    async with (
        FakeKommo(demo_dataset()) as fake,
        synced(fake, tmp_path / "pb.sqlite3", run=False) as parts,
    ):
        await parts.sync.sync_once(full=True)
        front = MirrorFirst(parts.kommo, parts.book, PhonebookConfig(), clock=time.monotonic)
        assert (await front.lookup("15550000000")).source == "phonebook"
        assert fake.requests_to(BY_PHONE_PATH) == 0
        untrusting = PhonebookConfig(trust_unknown=False)
        front.reconfigure(untrusting)
        assert (await front.lookup("15550000001")).source == "by_phone"
        assert fake.requests_to(BY_PHONE_PATH) == 1
        front.reconfigure(PhonebookConfig())
        parts.book.last_sync = time.time() - 3 * 10.0 - 1  # stale: 3 x sync_interval
        assert (await front.lookup("15550000002")).source == "by_phone"
        assert (await front.lookup(JOHN)).source == "phonebook"  # known: still answered


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b""])
async def test_a_damaged_file_is_set_aside_and_rebuilt(tmp_path: Path, content: bytes) -> None:
    database = tmp_path / "pb.sqlite3"
    database.write_bytes(content)
    async with FakeKommo(demo_dataset()) as fake, synced(fake, database, run=False) as parts:
        assert parts.book.rebuilt == "" if not content else "damaged" in parts.book.rebuilt
        await parts.sync.sync_once(full=True)
        assert parts.book.find(JOHN) is not None
    assert len(_damaged(tmp_path)) == (1 if content else 0)


def _damaged(folder: Path) -> list[Path]:
    return list(folder.glob("pb.sqlite3.damaged-*"))


async def test_a_foreign_database_is_refused_untouched(tmp_path: Path) -> None:
    import sqlite3

    from kommo_callerid.phonebook.book import PhoneBook
    from kommo_callerid.phonebook.store import MirrorError

    database = tmp_path / "journal.sqlite3"
    with sqlite3.connect(database) as other:
        other.execute("CREATE TABLE records (id INTEGER)")
    before = database.read_bytes()
    book = PhoneBook(database, sync_interval=10)
    with pytest.raises(MirrorError, match="not a phone book"):
        await book.open()
    assert database.read_bytes() == before


async def test_one_writer_at_a_time(tmp_path: Path) -> None:
    from kommo_callerid.phonebook.book import PhoneBook, PhoneBookBusy

    first = PhoneBook(tmp_path / "pb.sqlite3", sync_interval=10)
    await first.open()
    try:
        with pytest.raises(PhoneBookBusy):
            await PhoneBook(tmp_path / "pb.sqlite3", sync_interval=10).open()
    finally:
        await first.close()
    await asyncio.sleep(0)


async def test_the_mirror_is_whole_when_its_sync_returns_not_before(tmp_path: Path) -> None:
    """The state is applied on the loop: read from the database's thread, a 'complete' seen
    before the sync's own bookkeeping ran made a cluster test read full_passes == 0."""
    from kommo_callerid.phonebook.book import PhoneBook

    book = PhoneBook(tmp_path / "pb.sqlite3", sync_interval=10)
    await book.open()
    try:
        for _ in range(20):
            book.complete = False
            marking = asyncio.create_task(book.synced(full=True))
            while not marking.done():
                assert not book.complete
                await asyncio.sleep(0)
            await marking
            assert book.complete
    finally:
        await book.close()
