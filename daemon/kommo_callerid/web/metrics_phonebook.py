"""The phone book's ``/metrics``: entries by kind, the age of the last sync (and the interval,
so an alert can say "older than 3 sync intervals"), lookups by source, sync requests."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from kommo_callerid.web.stats import PhonebookStats

KINDS = ("contacts", "companies", "leads", "customers")
SOURCES = ("phonebook", "kommo")


def phonebook_metrics(prefix: str, book: PhonebookStats) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        prefix + "phonebook_entries", "Records in the local phone book, by kind.", labels=["kind"]
    )
    for kind in sorted({*KINDS, *book.entries}):
        entries.add_metric([kind], book.entries.get(kind, 0))
    yield entries
    yield GaugeMetricFamily(
        prefix + "phonebook_age_seconds",
        "Seconds since the phone book's last successful sync (+Inf: never synced).",
        math.inf if book.age_seconds is None else book.age_seconds,
    )
    yield GaugeMetricFamily(
        prefix + "phonebook_sync_interval_seconds",
        "[phonebook] sync_interval: seconds between incremental syncs.",
        book.sync_interval,
    )
    lookups = CounterMetricFamily(
        prefix + "phonebook_lookups",
        "Lookups by who answered: phonebook (the local mirror) or kommo (a request).",
        labels=["source"],
    )
    for source in sorted({*SOURCES, *book.lookups}):
        lookups.add_metric([source], book.lookups.get(source, 0))
    yield lookups
    yield CounterMetricFamily(
        prefix + "phonebook_sync_requests",
        "List requests the phone book's sync sent to Kommo.",
        book.sync_requests,
    )
    yield CounterMetricFamily(
        prefix + "phonebook_sync_failures",
        "Syncs that failed (each logged as phonebook.error).",
        book.sync_failures,
    )
