"""``/metrics``: the daemon's counters in the Prometheus text format.

A custom collector reads a fresh :class:`~.stats.StatsView` at scrape time, so nothing is
counted twice and the hot path never touches the metrics library. Each daemon has its own
``CollectorRegistry``: prometheus-client's global default registry is shared process state,
which two daemons in one process (tests) must not share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from kommo_callerid import __version__
from kommo_callerid.calls.detector import SkipReason
from kommo_callerid.core.models import AmiCounters, LatencyHistogram
from kommo_callerid.serving.guard import SHED_REASONS
from kommo_callerid.web.callerid import Answer
from kommo_callerid.web.metrics_phonebook import phonebook_metrics
from kommo_callerid.web.stats import DISCARD_REASONS, StatsView, status_label

PREFIX = "kommo_callerid_"
#: Label values shown at 0 before they first happen, so rate() and alerts see the series.
SKIP_REASONS = tuple(str(reason) for reason in SkipReason)
DROP_REASONS = ("ttl", "rejected", "shed")
CALLERID_RESULTS = tuple(str(answer) for answer in Answer)
JOURNAL_DROP_REASONS = ("rejected", "expired", "unknown", "full")
JOURNAL_UNTRACKED_REASONS = ("overflow", "stale", "link_lost")
RECORDING_REFUSALS = ("signature", "expired", "path", "missing")


class MetricsExporter:
    """Renders one daemon's metrics; ``content_type`` goes with what ``render`` returns."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, view: Callable[[], StatsView]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(view))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DaemonCollector:
    def __init__(self, view: Callable[[], StatsView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        yield InfoMetricFamily(PREFIX + "build", "The running version.", {"version": __version__})
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds", "Unix time the daemon started.", view.started_at
        )
        yield from _ami(view)
        yield from _calls(view)
        yield from _kommo(view)
        yield from _callerid(view)
        if view.cluster_up is not None:
            yield _gauge(
                "cluster_up",
                "1 while Redis answers (cluster), 0 while degraded.",
                int(view.cluster_up),
            )
        yield from _journal(view)
        if view.phonebook is not None:
            yield from phonebook_metrics(PREFIX, view.phonebook)
        if view.recordings_enabled:
            yield from _recordings(view)
        if view.listeners:
            yield from _listeners(view)


def _ami(view: StatsView) -> Iterator[Metric]:
    if view.pbx_links:  # several PBXs: the AMI series carry pbx="NAME"
        rows = [
            (link.name, link.connected, link.reconnects, link.events) for link in view.pbx_links
        ]
        yield from _ami_links("pbx", rows)
    else:
        yield from _ami_links("", [("", view.ami_connected, view.ami_reconnects, view.ami_events)])
    yield _gauge("event_queue_depth", "AMI events waiting for the call tracker.", view.queue_depth)


def _ami_links(label: str, rows: list[tuple[str, bool, int, AmiCounters]]) -> Iterator[Metric]:
    """The AMI series; without a label (one unnamed PBX) exactly as before PBXs had names."""
    labels = [label] if label else []
    connected = GaugeMetricFamily(
        PREFIX + "ami_connected", "1 while logged in to AMI, else 0.", labels=labels
    )
    reconnects = CounterMetricFamily(
        PREFIX + "ami_reconnects", "AMI reconnect attempts.", labels=labels
    )
    received = CounterMetricFamily(
        PREFIX + "ami_events_received",
        "Newchannel, NewCallerid and Hangup events read from Asterisk.",
        labels=labels,
    )
    discarded = CounterMetricFamily(
        PREFIX + "ami_events_discarded",
        "AMI events read but not used: dropped (queue full), invalid, oversized, garbage.",
        labels=[*labels, "reason"],
    )
    for name, is_connected, reconnect_count, events in rows:
        values = [name] if label else []
        connected.add_metric(values, int(is_connected))
        reconnects.add_metric(values, reconnect_count)
        received.add_metric(values, events.received)
        for reason in sorted(DISCARD_REASONS):
            discarded.add_metric([*values, reason], getattr(events, reason))
    yield from (connected, reconnects, received, discarded)


def _calls(view: StatsView) -> Iterator[Metric]:
    yield _counter("calls_detected", "Inbound calls detected.", view.calls_detected)
    yield _labelled_counter(
        "calls_skipped",
        "Channels not notified, by reason.",
        "reason",
        view.calls_skipped,
        SKIP_REASONS,
    )
    yield _gauge("calls_tracked", "Calls the call tracker holds.", view.tracked_calls)
    yield _gauge("calls_active", "Calls the notifier is working on.", view.active_calls)
    yield _gauge("tasks_in_flight", "Lookup and notification tasks running.", view.in_flight)
    yield _counter(
        "notifications_sent", "Call notifications Kommo accepted.", view.notifications_sent
    )
    yield _counter(
        "notifications_failed",
        "Call notifications Kommo did not accept.",
        view.notifications_failed,
    )
    yield _labelled_counter(
        "notifications_dropped",
        "Call notifications given up, by reason.",
        "reason",
        view.notifications_dropped,
        DROP_REASONS,
    )
    yield _histogram(
        "notification_latency_seconds",
        "From the call's first AMI event to Kommo accepting its notification.",
        view.notify_latency,
    )


def _kommo(view: StatsView) -> Iterator[Metric]:
    yield _counter("lookups", "Caller lookups, cache hits included.", view.lookups)
    yield _counter(
        "lookup_cache_hits", "Caller lookups answered from the cache.", view.lookup_cache_hits
    )
    yield _counter(
        "lookups_failed", "Caller lookups that ended in a Kommo error.", view.lookups_failed
    )
    yield _histogram(
        "lookup_duration_seconds", "Caller lookup time, cache hits included.", view.lookup_latency
    )
    requests = CounterMetricFamily(
        PREFIX + "kommo_requests",
        "Kommo API requests by endpoint and HTTP status (no_answer: transport error or timeout).",
        labels=["endpoint", "status"],
    )
    for (path, status), n in sorted(view.kommo_requests.items(), key=lambda kv: str(kv[0])):
        requests.add_metric([path, status_label(status)], n)
    yield requests
    yield _gauge("cache_entries", "Numbers in the lookup cache.", view.cache_entries)
    yield _gauge(
        "kommo_queue_depth", "Kommo requests waiting for the rate limit.", view.kommo_waiting
    )


def _callerid(view: StatsView) -> Iterator[Metric]:
    yield _labelled_counter(
        "callerid_requests",
        "GET /callerid answers by result: found, unknown, invalid, timeout, error, busy.",
        "result",
        view.callerid_answers,
        CALLERID_RESULTS,
    )
    yield _gauge(
        "callerid_background_lookups",
        "Lookups /callerid stopped waiting for, still running to fill the cache.",
        view.callerid_background,
    )


def _journal(view: StatsView) -> Iterator[Metric]:
    yield _counter(
        "journal_recorded", "Finished calls written to the journal's outbox.", view.journal_recorded
    )
    yield _gauge(
        "journal_pending", "Journal records not yet accepted by Kommo.", view.journal_pending
    )
    yield _counter("journal_sent", "Journal records Kommo accepted.", view.journal_sent)
    yield _labelled_counter(
        "journal_dropped",
        "Journal records given up, by reason: rejected, expired, unknown (skip), full.",
        "reason",
        view.journal_dropped,
        JOURNAL_DROP_REASONS if view.journal_enabled else (),
    )
    yield _labelled_counter(
        "journal_untracked",
        "Calls forgotten before they ended, so never journaled, by reason: overflow (over "
        "5,000 at once on a PBX), stale (4 h without a Hangup), link_lost (in progress when "
        "the AMI link was lost).",
        "reason",
        view.journal_untracked,
        JOURNAL_UNTRACKED_REASONS if view.journal_enabled else (),
    )


def _recordings(view: StatsView) -> Iterator[Metric]:
    yield _labelled_counter(
        "recordings_served",
        "Recording requests answered with the file, by status (200, 206, 304, 416 ...).",
        "status",
        view.recordings_served,
        ("200", "206"),
    )
    yield _labelled_counter(
        "recordings_refused",
        "Recording requests refused, by reason: signature (403), expired (410), path and "
        "missing (404).",
        "reason",
        view.recordings_refused,
        RECORDING_REFUSALS,
    )


def _listeners(view: StatsView) -> Iterator[Metric]:
    """Per listener (``http``: the local endpoint, ``public``): what serving/ guards."""
    open_now = GaugeMetricFamily(
        PREFIX + "http_connections", "Connections a listener holds now.", labels=["listener"]
    )
    shed = CounterMetricFamily(
        PREFIX + "http_connections_shed",
        "Connections a listener closed before their time, by reason: full (every connection "
        "busy), evicted (room for a newcomer), handshake (TLS not done in time), no_request "
        "and slow_request (a request not whole in time), stalled_reader (a response not "
        "taken for write_timeout).",
        labels=["listener", "reason"],
    )
    errors = CounterMetricFamily(
        PREFIX + "http_client_errors",
        "Malformed requests (an oversized header, garbage), answered 400 and not logged each.",
        labels=["listener"],
    )
    for listener in view.listeners:
        open_now.add_metric([listener.listener], listener.open)
        for reason in sorted({*SHED_REASONS, *listener.shed}):
            shed.add_metric([listener.listener, reason], listener.shed.get(reason, 0))
        errors.add_metric([listener.listener], listener.client_errors)
    yield from (open_now, shed, errors)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value)


def _labelled_counter(
    name: str, doc: str, label: str, values: Mapping[str, int], known: tuple[str, ...]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key in sorted({*known, *values}):
        family.add_metric([key], values.get(key, 0))
    return family


def _histogram(name: str, doc: str, histogram: LatencyHistogram) -> HistogramMetricFamily:
    buckets = [(_le(bound), n) for bound, n in histogram.cumulative()]
    return HistogramMetricFamily(PREFIX + name, doc, buckets=buckets, sum_value=histogram.sum)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
