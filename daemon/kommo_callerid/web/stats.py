"""One view of the running daemon's counters, read by the ``stats`` log line and ``/metrics``.

Both read the same :class:`StatsView`, built on demand from the counters the daemon's parts
already keep, so the hot path pays for nothing and the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kommo_callerid.core.models import AmiCounters, LatencyHistogram
from kommo_callerid.serving.guard import ListenerSnapshot

#: The AmiCounters fields that count events read but not delivered, i.e. the discard reasons.
DISCARD_REASONS = ("dropped", "invalid", "oversized", "garbage")


@dataclass(frozen=True, slots=True)
class PbxLinkStats:
    """One PBX's AMI link at one moment (``/metrics`` labels, the ``stats`` line)."""

    name: str
    connected: bool
    reconnects: int
    events: AmiCounters


@dataclass(frozen=True, slots=True)
class PhonebookStats:
    """The phone book at one moment (``[phonebook] enabled``)."""

    #: Entries per kind: contacts, companies, leads, customers.
    entries: Mapping[str, int]
    #: Seconds since the last successful sync; None: never.
    age_seconds: float | None
    sync_interval: float
    #: Lookups by who answered: phonebook, kommo.
    lookups: Mapping[str, int]
    sync_requests: int
    sync_failures: int


@dataclass(frozen=True, slots=True)
class StatsView:
    """The counters at one moment. Histograms are the live objects (read, never written)."""

    ami_connected: bool
    ami_reconnects: int
    ami_events: AmiCounters
    events_processed: int
    queue_depth: int
    tracked_calls: int
    active_calls: int
    in_flight: int
    calls_detected: int
    calls_skipped: Mapping[str, int]
    notifications_sent: int
    notifications_failed: int
    notifications_dropped: Mapping[str, int]
    notify_latency: LatencyHistogram
    lookups: int
    lookup_cache_hits: int
    lookups_failed: int
    lookup_latency: LatencyHistogram
    #: (endpoint path, HTTP status or None when no answer came) -> requests
    kommo_requests: Mapping[tuple[str, int | None], int]
    cache_entries: int
    #: /callerid answers by result ("found", "timeout", ...); empty without the endpoint.
    callerid_answers: Mapping[str, int]
    callerid_background: int
    started_at: float
    #: Kommo requests waiting for the rate limit.
    kommo_waiting: int = 0
    #: With [cluster]: True while Redis answers, False while degraded; None without.
    cluster_up: bool | None = None
    #: The call journal (all 0 when it is disabled): records written by this process, not yet
    #: accepted (outbox), accepted by Kommo, and given up by reason.
    journal_enabled: bool = False
    journal_recorded: int = 0
    journal_pending: int = 0
    journal_sent: int = 0
    journal_dropped: Mapping[str, int] = field(default_factory=dict)
    #: Calls forgotten before they ended (so never journaled), by reason.
    journal_untracked: Mapping[str, int] = field(default_factory=dict)
    #: Recording requests (the public endpoint): answered by status, refused by reason.
    recordings_enabled: bool = False
    recordings_served: Mapping[str, int] = field(default_factory=dict)
    recordings_refused: Mapping[str, int] = field(default_factory=dict)
    #: Per PBX, with several (``[ami.NAME]``); empty for the one unnamed ``[ami]``.
    pbx_links: tuple[PbxLinkStats, ...] = ()
    phonebook: PhonebookStats | None = None
    #: The bounded HTTP listeners running (``http``, ``public``): connections and what
    #: their guards shed.
    listeners: tuple[ListenerSnapshot, ...] = ()


def log_fields(view: StatsView) -> dict[str, Any]:
    """The ``stats`` (and ``daemon.stopped``) line: the /metrics counters, flat-ish JSON."""
    return {
        "ami_connected": view.ami_connected,
        "ami_reconnects": view.ami_reconnects,
        "ami_events_received": view.ami_events.received,
        "ami_events_discarded": _nonzero(
            {reason: getattr(view.ami_events, reason) for reason in DISCARD_REASONS}
        ),
        "events": view.events_processed,
        "queue_depth": view.queue_depth,
        "tracked_calls": view.tracked_calls,
        "active_calls": view.active_calls,
        "in_flight": view.in_flight,
        "calls_incoming": view.calls_detected,
        "calls_skipped": dict(view.calls_skipped),
        "notifications_sent": view.notifications_sent,
        "notifications_failed": view.notifications_failed,
        "notifications_dropped": sum(view.notifications_dropped.values()),
        "notifications_dropped_by_reason": dict(view.notifications_dropped),
        "notify_latency_avg_ms": _average_ms(view.notify_latency),
        "lookups": view.lookups,
        "lookup_cache_hits": view.lookup_cache_hits,
        "lookups_failed": view.lookups_failed,
        "lookup_avg_ms": _average_ms(view.lookup_latency),
        "kommo_requests": {
            f"{path} {status_label(status)}": n
            for (path, status), n in sorted(view.kommo_requests.items(), key=_request_order)
        },
        "cache_entries": view.cache_entries,
        "callerid_answers": dict(view.callerid_answers),
        "journal_recorded": view.journal_recorded,
        "journal_pending": view.journal_pending,
        "journal_sent": view.journal_sent,
        "journal_dropped": sum(view.journal_dropped.values()),
        "journal_untracked": sum(view.journal_untracked.values()),
        **_pbx_fields(view.pbx_links),
        **_phonebook_fields(view.phonebook),
    }


def _phonebook_fields(book: PhonebookStats | None) -> dict[str, Any]:
    if book is None:
        return {}
    age = None if book.age_seconds is None else round(book.age_seconds, 1)
    return {
        "phonebook": {
            "entries": dict(book.entries),
            "age_seconds": age,
            "lookups": dict(book.lookups),
            "sync_requests": book.sync_requests,
        }
    }


def _pbx_fields(links: tuple[PbxLinkStats, ...]) -> dict[str, Any]:
    """With several PBXs, ``pbx``: each one's link (the totals above sum them)."""
    if not links:
        return {}
    return {
        "pbx": {
            link.name: {
                "connected": link.connected,
                "reconnects": link.reconnects,
                "events_received": link.events.received,
            }
            for link in links
        }
    }


def status_label(status: int | None) -> str:
    """An HTTP status as a label; a request that got no answer at all is ``no_answer``."""
    return "no_answer" if status is None else str(status)


def _request_order(item: tuple[tuple[str, int | None], int]) -> tuple[str, int]:
    (path, status), _ = item
    return path, -1 if status is None else status


def _nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {key: n for key, n in counts.items() if n}


def _average_ms(histogram: LatencyHistogram) -> float | None:
    if not histogram.count:
        return None
    return round(histogram.sum / histogram.count * 1000, 1)
