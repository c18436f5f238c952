"""The call journal at Kommo's 7 requests/s: records per second with batches, and the time from
a call's end (the record handed to the journal) to Kommo accepting it, p50/p99, idle and
under a 100-call burst (target: the burst fully journaled in <= 5 s, <= 7 requests/s).

The first three run the journal's real parts in this process — the SQLite outbox (WAL,
synchronous=FULL, on this disk), the sender, the Kommo client's transport and rate limiter —
against the fake Kommo over loopback with its strict 7/s limit. The last runs the whole
daemon in its own process: 100 calls arrive and are notified, then all hang up within one
second; measured from each call's last Hangup on the AMI wire to Kommo accepting its record.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from common import BENCH_USERS, Child, PbxMix, Report, call_bytes, daemon_config, percentile
from pydantic import SecretStr

from kommo_callerid.core.config import CacheConfig, JournalConfig, KommoConfig, NotifyConfig
from kommo_callerid.core.models import CallDirection, CallStatus, FinishedCall
from kommo_callerid.journal.outbox import AsyncOutbox
from kommo_callerid.journal.sender import JournalSender
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.journal_api import KommoJournal
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import (
    BY_PHONE_PATH,
    FakeContact,
    FakeKommo,
    KommoDataset,
    demo_dataset,
)

KOMMO_RATE = 7
CALLERS = ("+18305803077", "+14155550199", "+442079460958", "+12125550142", "+16465550123")


def call(n: int) -> FinishedCall:
    return FinishedCall(
        call_id=f"bench.{n}",
        pbx="",
        linkedid=f"bench.{n}",
        uniqueid=f"bench.{n}",
        direction=CallDirection.INBOUND,
        phone=CALLERS[n % len(CALLERS)],
        started_at=time.time() - 60,
        duration=55,
        status=CallStatus.ANSWERED,
        answered_by="100",
        extension=None,
        did="5551000",
        result="answered by 100",
    )


class Bench:
    def __init__(self, kommo: FakeKommo, journal: JournalSender) -> None:
        self.kommo = kommo
        self.journal = journal
        self.ended: dict[str, float] = {}
        self._next = 0

    def end_calls(self, count: int) -> None:
        for _ in range(count):
            self._next += 1
            finished = call(self._next)
            self.ended[finished.call_id] = time.monotonic()
            self.journal.record(finished)

    async def settled(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.kommo.journal.calls) >= len(self.ended):
                break
            await asyncio.sleep(0.01)
        return time.monotonic()

    def latencies_ms(self, first: int = 0) -> list[float]:
        arrival = {record.order: record.at for record in self.kommo.requests}
        accepted = {c.uniq: arrival[c.order] for c in self.kommo.journal.calls}
        return [
            (accepted[uniq] - ended) * 1000
            for uniq, ended in list(self.ended.items())[first:]
            if uniq in accepted
        ]


async def _with_journal(folder: Path, work: Any) -> None:
    async with FakeKommo(demo_dataset(), rate_limit=KOMMO_RATE) as fake:
        config = KommoConfig(
            base_url=fake.base_url, access_token=SecretStr(fake.token), rate_limit=KOMMO_RATE
        )
        async with KommoClient(config, CacheConfig()) as kommo:
            outbox = AsyncOutbox(folder / f"journal-{time.monotonic_ns()}.sqlite3")
            await outbox.open()
            api = KommoJournal(
                kommo.transport, timeout=config.timeout, rate_limit=config.rate_limit
            )
            journal = JournalSender(outbox, api, JournalConfig(), NotifyConfig())
            journal.start()
            try:
                await work(Bench(fake, journal))
            finally:
                await journal.close(2.0)


def _most_in_a_second(kommo: FakeKommo) -> int:
    times = sorted(record.at for record in kommo.requests)
    return max((sum(1 for t in times if s <= t < s + 1.0) for s in times), default=0)


async def run(report: Report, quick: bool) -> None:
    # The journal's lines (one per record) would drown the table; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    backlog = 200 if quick else 2000
    idle_calls = 5 if quick else 20
    with tempfile.TemporaryDirectory(prefix="kommo-callerid-bench-journal-") as tmp:
        folder = Path(tmp)

        async def throughput(bench: Bench) -> None:
            started = time.monotonic()
            bench.end_calls(backlog)
            finished = await bench.settled(60 + backlog / KOMMO_RATE)
            rate = len(bench.kommo.journal.calls) / (finished - started)
            batches = bench.kommo.journal.batches
            report.add(
                f"journal: {backlog} records delivered at 7 req/s",
                f"{rate:.0f} records/s ({len(batches)} requests, up to {max(batches)} per batch)",
            )

        async def idle(bench: Bench) -> None:
            for _ in range(idle_calls):
                bench.end_calls(1)
                await asyncio.sleep(0.5)
            await bench.settled(30)
            ms = bench.latencies_ms()
            report.add(
                "journal: call end -> accepted, idle (p50 / p99)",
                f"{percentile(ms, 0.5):.0f} / {percentile(ms, 0.99):.0f} ms",
            )

        async def burst(bench: Bench) -> None:
            started = time.monotonic()
            for _ in range(10):  # 100 calls ending within one second
                bench.end_calls(10)
                await asyncio.sleep(0.1)
            finished = await bench.settled(60)
            took = finished - started
            ms = bench.latencies_ms()
            most = _most_in_a_second(bench.kommo)
            report.add(
                "journal: call end -> accepted, 100-call burst (p50 / p99)",
                f"{percentile(ms, 0.5):.0f} / {percentile(ms, 0.99):.0f} ms",
            )
            report.add(
                "journal: 100-call burst fully journaled",
                f"{took:.2f} s, {len(bench.kommo.journal.batches)} requests, "
                f"most in any second {most}, violations {bench.kommo.violations}",
                "<= 5 s, <= 7 req/s",
                took <= 5 and most <= KOMMO_RATE and bench.kommo.violations == 0,
            )

        for work in (throughput, idle, burst):
            await _with_journal(folder, work)
    await _through_the_daemon(report, 20 if quick else 100)


async def _through_the_daemon(report: Report, calls: int) -> None:
    mix = PbxMix()
    callers = [f"1646{5550000 + n:07d}" for n in range(calls)]
    known = KommoDataset(
        contacts=tuple(
            FakeContact(7000 + n, f"Caller {n}", (caller,), 8375357, 1_700_000_000)
            for n, caller in enumerate(callers)
        )
    )
    burst = [mix.inbound(caller, agents=("100",)) for caller in callers]
    async with (
        FakeAmiServer(users=BENCH_USERS) as ami,
        FakeKommo(known, rate_limit=KOMMO_RATE) as kommo,
    ):
        config = daemon_config(ami, kommo, notify={"dids": {"5551000": [7]}})
        async with Child("daemon", config) as child:
            ami.emit_raw(b"".join(call_bytes(call.events) for call in burst))
            deadline = time.monotonic() + 60 + 3 * calls / KOMMO_RATE
            while time.monotonic() < deadline:  # every call notified and looked up
                tables = await child.ask("stats")
                if kommo.requests_to(BY_PHONE_PATH) >= calls and tables["limiter_waiting"] == 0:
                    break
                await asyncio.sleep(0.2)
            hung_up: dict[str, float] = {}
            started = time.monotonic()
            for tenth in range(10):  # every call ends within one second
                for call in burst[tenth::10]:
                    ami.emit_raw(call_bytes(call.hangups))
                    hung_up[call.linkedid] = time.monotonic()
                await asyncio.sleep(0.1)
            while time.monotonic() < started + 60:
                if len(kommo.journal.calls) >= calls:
                    break
                await asyncio.sleep(0.01)
            took = time.monotonic() - started
    arrival = {record.order: record.at for record in kommo.requests}
    ms = [(arrival[c.order] - hung_up[c.uniq]) * 1000 for c in kommo.journal.calls]
    journal_times = sorted(r.at for r in kommo.requests if r.at >= started)
    most = max(
        (sum(1 for t in journal_times if s <= t < s + 1.0) for s in journal_times), default=0
    )
    report.add(
        f"journal through the daemon: {calls} calls hang up within 1 s (p50 / p99 to accepted)",
        f"{percentile(ms, 0.5):.0f} / {percentile(ms, 0.99):.0f} ms",
    )
    report.add(
        f"journal through the daemon: {calls}-call burst fully journaled",
        f"{len(kommo.journal.calls)} of {calls} in {took:.2f} s, "
        f"{len(kommo.journal.batches)} requests, most in any second {most}, "
        f"violations {kommo.violations}",
        "<= 5 s, <= 7 req/s",
        len(kommo.journal.calls) == calls and took <= 5 and kommo.violations == 0,
    )
