"""The journal's sender against the fake Kommo over real sockets, with a real outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, JournalConfig, KommoConfig, NotifyConfig
from kommo_callerid.core.hot_path import HotPath
from kommo_callerid.core.models import CallDirection, CallStatus
from kommo_callerid.journal.entry import JournalEntry
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import JournalSender
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.kommo_journal import CALLS_PATH

from support import ManualClock, events, finished_call, on_disk, wait_for

JOHN = "+18305803077"  # contact 1001, no deals
MARIA = "+14155550199"  # contact 1002: one active lead 3001
WEI = "+442079460958"  # contact 1003: one customer 4001
ACME = "+12125550142"  # company 2001
OLGA = "+74951234567"  # contact 1004: two active leads -> the contact
NOBODY = "+13125550100"
NOTIFY = NotifyConfig(extensions={"100": 8375357}, dids={"5551000": (8320148,)})


@asynccontextmanager
async def journal_for(
    fake: FakeKommo,
    database: Path,
    *,
    clock: ManualClock | None = None,
    rate_limit: float = 1000.0,
    linger: float = 0.0,
    outbox: type[AsyncOutbox] = AsyncOutbox,
    hot_path: HotPath | None = None,
    **settings: Any,
) -> AsyncIterator[JournalSender]:
    config = KommoConfig(
        base_url=fake.base_url, access_token=SecretStr(fake.token), rate_limit=rate_limit
    )
    async with KommoClient(config, CacheConfig()) as kommo:
        opened = outbox(database)
        await opened.open()
        api = KommoJournal(kommo.transport, timeout=config.timeout, rate_limit=config.rate_limit)
        journal_config = JournalConfig(database=database, **settings)
        timing: dict[str, Any] = {"clock": clock, "sleep": clock.sleep} if clock else {}
        sender = JournalSender(
            opened, api, journal_config, NOTIFY, linger=linger, hot_path=hot_path, **timing
        )
        sender.start()
        try:
            yield sender
        finally:
            await sender.close(2.0)


def calls_of(fake: FakeKommo) -> dict[str, dict[str, Any]]:
    return {call.uniq: call.body for call in fake.journal.calls}


def delivered(fake: FakeKommo, count: int) -> Callable[[], bool]:
    return lambda: len(fake.journal.calls) >= count


async def test_calls_attach_by_kommo_rule_with_the_contract_fields(tmp_path: Path) -> None:
    calls = [
        finished_call("1.1", JOHN, answered_by="100", duration=65),
        finished_call("1.2", MARIA, status=CallStatus.NO_ANSWER),
        finished_call("1.3", WEI, status=CallStatus.BUSY),
        finished_call("1.4", ACME, answered_by="101", did="5559999"),
        finished_call(
            "1.5", OLGA, direction=CallDirection.OUTBOUND, extension="100", answered_by="x"
        ),
    ]
    async with FakeKommo(demo_dataset()) as fake:
        link = "https://pbx.example/rec/{linkedid}.wav"
        with capture_logs() as logs:
            async with journal_for(fake, tmp_path / "j.db", recording_url=link) as journal:
                for call in calls:
                    journal.record(call)
                await wait_for(delivered(fake, 5))
                await wait_for(lambda: journal.stats.sent == 5 and journal.pending == 0)
                assert (await journal.outbox.counts())["sent"] == 5  # on disk
    where = {c.uniq: (c.entity_type, c.entity_id) for c in fake.journal.calls}
    assert where == {
        "1.1": ("contact", 1001),
        "1.2": ("lead", 3001),
        "1.3": ("customer", 4001),
        "1.4": ("company", 2001),
        "1.5": ("contact", 1004),
    }
    john = calls_of(fake)["1.1"]
    assert john == {
        "direction": "inbound",
        "uniq": "1.1",
        "duration": 65,
        "source": "kommo-callerid",
        "phone": JOHN,
        "call_status": 4,
        "call_result": "answered by 100",
        "created_at": 1_780_000_000,
        "request_id": john["request_id"],
        "link": "https://pbx.example/rec/1.1.wav",
        "responsible_user_id": 8375357,
        "created_by": 8375357,
    }
    assert calls_of(fake)["1.2"]["responsible_user_id"] == 8320148  # the DID's user
    assert calls_of(fake)["1.4"].get("responsible_user_id") is None  # 101 and 5559999 are nobody's
    assert calls_of(fake)["1.5"]["direction"] == "outbound"
    assert calls_of(fake)["1.3"]["call_status"] == 7
    recorded = events(logs, "journal.recorded")
    assert [line["call_id"] for line in recorded] == ["1.1", "1.2", "1.3", "1.4", "1.5"]
    assert recorded[0]["answered_by"] == "100" and recorded[0]["duration"] == 65
    sent = events(logs, "journal.sent")
    assert sum(line["count"] for line in sent) == 5
    assert {"call_id": "1.2", "entity_type": "lead", "entity_id": 3001} in [
        call for line in sent for call in line["calls"]
    ]


async def test_unknown_caller_is_skipped_or_becomes_an_incoming_lead(tmp_path: Path) -> None:
    async with FakeKommo(demo_dataset()) as fake:
        with capture_logs() as logs:
            async with journal_for(fake, tmp_path / "skip.db") as journal:
                journal.record(finished_call("2.1", NOBODY))
                await wait_for(lambda: bool(journal.stats.dropped) and journal.pending == 0)
                assert (await journal.outbox.counts())["dropped"] == 1  # on disk
            async with journal_for(
                fake, tmp_path / "unsorted.db", unknown="unsorted", pipeline_id=77
            ) as journal:
                journal.record(finished_call("2.2", NOBODY, duration=12))
                await wait_for(lambda: on_disk(journal.outbox)["sent"] == 1)
    dropped = events(logs, "journal.dropped")
    assert [(d["call_id"], d["reason"]) for d in dropped] == [("2.1", "unknown")]
    [lead] = fake.journal.unsorted
    assert lead["pipeline_id"] == 77 and lead["source_uid"] == "2.2"
    metadata = lead["metadata"]
    assert metadata["is_call_event_needed"] is True and metadata["phone"] == NOBODY
    assert {"from", "called_at", "duration", "link", "service_code", "uniq"} <= set(metadata)
    [unsorted] = events(logs, "journal.unsorted")
    assert unsorted["call_id"] == "2.2" and isinstance(unsorted["lead_id"], int)


async def test_a_missed_call_gets_one_call_back_task_even_across_a_restart(
    tmp_path: Path,
) -> None:
    missed = finished_call("3.1", MARIA, status=CallStatus.NO_ANSWER)
    database = tmp_path / "j.db"
    async with FakeKommo(demo_dataset()) as fake:
        with capture_logs() as logs:
            async with journal_for(fake, database, missed_task=True) as journal:
                journal.record(missed)
                journal.record(finished_call("3.2", JOHN))  # answered: no task
                await wait_for(lambda: on_disk(journal.outbox)["sent"] == 2)
            async with journal_for(fake, database, missed_task=True) as journal:
                journal.record(missed)  # offered again (a replay): written once, no new task
                await journal_settled(journal)
    [task] = fake.journal.tasks
    assert (task["entity_type"], task["entity_id"], task["task_type_id"]) == ("leads", 3001, 1)
    assert task["responsible_user_id"] == 8320148  # the lead's responsible user
    assert task["complete_till"] == 1_780_000_000 + 3600
    [created] = events(logs, "journal.task_created")
    assert created["responsible_user_id"] == 8320148
    assert len(fake.journal.calls) == 2


async def journal_settled(journal: JournalSender) -> None:
    await wait_for(lambda: journal.pending == 0)


async def test_the_bookkeeping_after_an_answer_lets_a_call_in_flight_pass(tmp_path: Path) -> None:
    """Kommo has taken the record while a call is between its lookup and its notification:
    the record is marked sent once the call is through (issue 22), not before."""
    hot_path = HotPath(longest_wait=5.0)
    async with (
        FakeKommo(demo_dataset()) as fake,
        journal_for(fake, tmp_path / "hot.db", hot_path=hot_path) as journal,
    ):
        with hot_path.call():
            journal.record(finished_call("6.0", JOHN))
            await wait_for(delivered(fake, 1))
            await asyncio.sleep(0.05)
            assert (journal.stats.sent, journal.pending) == (0, 1)
        await wait_for(lambda: journal.stats.sent == 1 and journal.pending == 0)


async def test_one_rejected_item_the_rest_delivered_and_that_one_dropped(tmp_path: Path) -> None:
    callers = [JOHN, MARIA, WEI, ACME]
    for batch_400 in (False, True):
        async with FakeKommo(demo_dataset()) as fake:
            fake.journal.reject_numbers.add(WEI)
            fake.journal.batch_400 = batch_400
            with capture_logs() as logs:
                async with journal_for(fake, tmp_path / f"{batch_400}.db") as journal:
                    for n, caller in enumerate(callers):
                        journal.record(finished_call(f"4.{n}", caller))
                    await wait_for(lambda: journal.stats.sent == 3 and journal.pending == 0)
                    counts = await journal.outbox.counts()  # on disk
                    assert (counts["sent"], counts["dropped"]) == (3, 1)
        assert sorted(fake.journal.uniqs()) == ["4.0", "4.1", "4.3"]
        [dropped] = events(logs, "journal.dropped")
        assert (dropped["call_id"], dropped["reason"]) == ("4.2", "rejected")
        assert "refused" in dropped["detail"]


async def test_kommo_down_for_10_minutes_then_every_record_delivered(tmp_path: Path) -> None:
    clock = ManualClock()
    clock.now = 1_780_000_000.0
    async with FakeKommo(demo_dataset(), clock=clock) as fake:
        fake.outage(503, 600.0, path=CALLS_PATH)
        with capture_logs() as logs:
            async with journal_for(fake, tmp_path / "j.db", clock=clock) as journal:
                for n in range(20):
                    journal.record(finished_call(f"5.{n}", [JOHN, MARIA, WEI][n % 3]))
                await wait_for(delivered(fake, 20), 10)
                await wait_for(lambda: on_disk(journal.outbox)["sent"] == 20)
    assert sorted(fake.journal.uniqs()) == sorted(f"5.{n}" for n in range(20))
    assert clock.now >= 1_780_000_600.0  # the sender waited the outage out
    failed = [r for r in fake.requests if r.path == CALLS_PATH and r.status == 503]
    assert 3 <= len(failed) <= 20  # backed off: capped, jittered, not a busy loop
    assert events(logs, "journal.dropped") == []


async def test_a_record_kommo_never_takes_expires_after_retain(tmp_path: Path) -> None:
    clock = ManualClock()
    clock.now = 1_780_000_000.0
    async with FakeKommo(demo_dataset(), clock=clock) as fake:
        fake.journal.down = True
        with capture_logs() as logs:
            async with journal_for(fake, tmp_path / "j.db", clock=clock, retain=900.0) as journal:
                journal.record(finished_call("6.1", JOHN))
                await wait_for(lambda: on_disk(journal.outbox)["dropped"] == 1, 10)
    [dropped] = events(logs, "journal.dropped")
    assert dropped["reason"] == "expired" and "retain" in dropped["detail"]
    assert clock.now >= 1_780_000_900.0


async def test_a_full_outbox_refuses_new_records_and_says_so(tmp_path: Path) -> None:
    async with FakeKommo(demo_dataset()) as fake:
        fake.journal.down = True
        config = KommoConfig(base_url=fake.base_url, access_token=SecretStr(fake.token))
        async with KommoClient(config, CacheConfig()) as kommo:
            outbox = AsyncOutbox(tmp_path / "j.db", capacity=2)
            await outbox.open()
            api = KommoJournal(
                kommo.transport, timeout=config.timeout, rate_limit=config.rate_limit
            )
            sender = JournalSender(outbox, api, JournalConfig(), NOTIFY)
            sender.start()
            with capture_logs() as logs:
                for n in range(3):
                    sender.record(finished_call(f"9.{n}", JOHN))
                await wait_for(lambda: sender.stats.dropped["full"] == 1)
            await sender.close(1.0)
    [full] = events(logs, "journal.dropped")
    assert (full["call_id"], full["reason"]) == ("9.2", "full")
    assert "2 unsent records" in full["detail"]
    assert outbox.pending == 2


async def test_a_hostile_answer_is_retried_without_an_error(tmp_path: Path) -> None:
    """A 2xx whose JSON has the wrong shapes (a list for ``_embedded``, an infinite id): the
    item it names is taken as accepted (without an entity), the call it leaves out is
    retried, and the sender never fails on it."""
    hostile = '{"_embedded": {"calls": [{"request_id": "0", "_embedded": [], "entity_id": 1e999}]}}'
    async with FakeKommo(demo_dataset()) as fake:
        fake.fail_next(CALLS_PATH, 200, hostile, content_type="application/json")
        with capture_logs() as logs:
            async with journal_for(fake, tmp_path / "j.db") as journal:
                journal.record(finished_call("6.0", JOHN))
                journal.record(finished_call("6.1", MARIA))
                await wait_for(lambda: on_disk(journal.outbox)["sent"] == 2, 15)
    assert fake.journal.uniqs() == ["6.1"]  # 6.0 was "accepted" by the hostile answer
    assert events(logs, "journal.error") == []


class CountingOutbox(AsyncOutbox):
    """Counts the sender's looks at the outbox."""

    looks = 0

    def due_or_next_try(self, now: float, limit: int) -> tuple[list[JournalEntry], float | None]:
        self.looks += 1
        return super().due_or_next_try(now, limit)


async def test_calls_that_end_together_share_one_request(tmp_path: Path) -> None:
    """Five calls ending 20 ms apart (a busy hour): with the daemon's linger they go in one
    request (before: one request per call, 5 of Kommo's 7 a second), and the sender looks
    at the outbox twice: once when the first has lingered, once after the send (before: a
    third look, right after the first write, only to learn how long to linger)."""
    async with (
        FakeKommo(demo_dataset()) as fake,
        journal_for(fake, tmp_path / "linger.db", linger=0.25, outbox=CountingOutbox) as journal,
    ):
        for n in range(5):
            journal.record(finished_call(f"7.{n}", JOHN))
            await asyncio.sleep(0.02)
        await wait_for(delivered(fake, 5))
        await asyncio.sleep(0.3)  # what follows the send: one look finding nothing due
        looks = journal.outbox.looks if isinstance(journal.outbox, CountingOutbox) else -1
    assert fake.requests_to(CALLS_PATH) == 1
    assert looks == 2
