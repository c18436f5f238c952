"""/metrics counts recording requests: served by status, refused by reason (0 shown early)."""

from __future__ import annotations

from typing import Any

from kommo_callerid.core.models import AmiCounters, LatencyHistogram
from kommo_callerid.web.metrics import MetricsExporter
from kommo_callerid.web.stats import StatsView


def view(**recordings: Any) -> StatsView:
    zero: dict[str, Any] = dict.fromkeys(
        (
            "ami_reconnects",
            "events_processed",
            "queue_depth",
            "tracked_calls",
            "active_calls",
            "in_flight",
            "calls_detected",
            "notifications_sent",
            "notifications_failed",
            "lookups",
            "lookup_cache_hits",
            "lookups_failed",
            "cache_entries",
            "callerid_background",
        ),
        0,
    )
    names = ("calls_skipped", "notifications_dropped", "kommo_requests", "callerid_answers")
    empty: dict[str, Any] = {name: {} for name in names}
    return StatsView(
        ami_connected=True,
        ami_events=AmiCounters(),
        notify_latency=LatencyHistogram(),
        lookup_latency=LatencyHistogram(),
        started_at=0.0,
        **zero,
        **empty,
        **recordings,
    )


def test_metrics_count_served_and_refused_recordings() -> None:
    on = view(
        recordings_enabled=True,
        recordings_served={"206": 3, "200": 1},
        recordings_refused={"signature": 2},
    )
    text = MetricsExporter(lambda: on).render().decode()
    assert 'kommo_callerid_recordings_served_total{status="206"} 3.0' in text
    assert 'kommo_callerid_recordings_refused_total{reason="signature"} 2.0' in text
    assert 'kommo_callerid_recordings_refused_total{reason="expired"} 0.0' in text
    off = MetricsExporter(view).render().decode()
    assert "recordings" not in off
