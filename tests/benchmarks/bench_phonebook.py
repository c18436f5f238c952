"""The phone book: a full pass of 100,000 contacts (requests, time at Kommo's 7 requests/s
shared, database size, RSS) and a lookup from the mirror (p50/p99, target p99 <= 50 µs).

The real sync (list API client, transport, SQLite mirror on this disk) runs against the fake
Kommo over loopback without its rate limit, so the pass takes what parsing and writing take;
the time at 7 requests/s is then what the sync's own pace allows (rate_limit - 2 = 5 a
second, the rest left to notifications): requests / 5. Lookups run in this process, as the
daemon runs them (on the event loop, through the read connection).
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import tempfile
import time
from pathlib import Path

import structlog
from common import Report, percentile

from kommo_callerid.core.config import CacheConfig, KommoConfig, PhonebookConfig
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.phonebook_api import HEADROOM, KommoDirectory
from kommo_callerid.phonebook.book import PhoneBook
from kommo_callerid.phonebook.sync import PhoneBookSync
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.kommo_data import (
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
)

KOMMO_RATE = 7


def dataset(contacts: int) -> KommoDataset:
    rng = random.Random(21)
    base = 1_600_000_000
    people = tuple(
        FakeContact(i, f"Contact {i}", (f"+1 {2_000_000_000 + i * 7}",), 1 + i % 40, base + i)
        for i in range(1, contacts + 1)
    )
    companies = tuple(
        FakeCompany(10_000_000 + i, f"Company {i}", (f"+44 20 {70_000_000 + i}",), 3, base + i)
        for i in range(contacts // 50)
    )
    leads = tuple(
        FakeLead(
            20_000_000 + i,
            f"Lead {i}",
            5,
            rng.random() < 0.7,
            (rng.randint(1, contacts),),
            updated_at=base + i,
        )
        for i in range(contacts // 5)
    )
    customers = tuple(
        FakeCustomer(
            30_000_000 + i, f"Customer {i}", 6, (rng.randint(1, contacts),), updated_at=base + i
        )
        for i in range(contacts // 100)
    )
    return KommoDataset(people, companies, leads, customers)


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("phonebook.sqlite3*")) / 1e6


async def run(report: Report, quick: bool) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    contacts = 10_000 if quick else 100_000
    data = dataset(contacts)
    with tempfile.TemporaryDirectory(prefix="kommo-callerid-bench-phonebook-") as tmp:
        database = Path(tmp) / "phonebook.sqlite3"
        async with FakeKommo(data) as fake:
            kommo_config = KommoConfig(
                base_url=fake.base_url, access_token=fake.token, rate_limit=1000
            )
            async with KommoClient(kommo_config, CacheConfig()) as kommo:
                book = PhoneBook(database, sync_interval=10.0)
                await book.open()
                directory = KommoDirectory(kommo.transport, rate_limit=1000)
                sync = PhoneBookSync(
                    book, directory, PhonebookConfig(enabled=True, database=database)
                )
                started = time.perf_counter()
                outcome = await sync.sync_once(full=True)
                took = time.perf_counter() - started
                idle = await sync.sync_once(full=False)
                rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                numbers = [
                    f"1{2_000_000_000 + random.randint(1, contacts) * 7}" for _ in range(20_000)
                ]
                numbers += ["15550000000"] * 2_000  # unknown
                times = []
                for number in numbers:
                    t0 = time.perf_counter_ns()
                    book.find(number)
                    times.append((time.perf_counter_ns() - t0) / 1000)
                await book.close()
        size_mb = _size_mb(Path(tmp))
    pace = KOMMO_RATE - HEADROOM
    label = f"{contacts:,} contacts"
    report.add(f"phone book full pass, {label}: requests", str(outcome.requests))
    report.add(f"phone book full pass, {label}: time here (no rate limit)", f"{took:.1f} s")
    report.add(
        f"phone book full pass, {label}: time at {KOMMO_RATE} req/s shared",
        f"{outcome.requests / pace / 60:.1f} min ({pace:g} req/s for the sync)",
    )
    report.add(f"phone book database, {label}", f"{size_mb:.1f} MB")
    report.add("phone book sync process peak RSS", f"{rss_mb:.0f} MB")
    report.add(
        "phone book idle incremental sync: requests", str(idle.requests), "<= 4", idle.requests <= 4
    )
    p99 = percentile(times, 0.99)
    report.add(
        "phone book lookup p50 / p99",
        f"{percentile(times, 0.5):.1f} / {p99:.1f} µs",
        "p99 <= 50 µs",
        p99 <= 50,
    )


if __name__ == "__main__":
    r = Report()
    asyncio.run(run(r, quick=False))
    print(r.markdown())
