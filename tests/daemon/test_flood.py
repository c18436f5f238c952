"""A call flood (issue 13, point 1): 1,500 inbound calls in a burst, no Hangups, against a
Kommo that allows 7 requests/s. A real call placed after the burst is notified within
seconds; expired requests leave the rate limiter unsent; the oldest calls beyond the cap
are shed and counted; the daemon stops within ``shutdown_timeout``. Real sockets."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.daemon.notifier import MAX_PENDING_CALLS
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.recording import format_message
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, wait_for

FLOOD = 1_500
REAL_CALLER = "14155550199"


async def test_a_real_call_after_a_flood_is_notified_within_seconds(ami: FakeAmiServer) -> None:
    scenarios = CallScenarios()
    burst = b"".join(
        format_message(event)
        for n in range(FLOOD)
        for event in scenarios.inbound(f"1830{n:07d}", agents=()).events
    )
    real = scenarios.inbound(REAL_CALLER, did="5552000", agents=())
    async with FakeKommo(rate_limit=7) as kommo:
        config = make_config(
            ami,
            kommo,
            kommo={"rate_limit": 7.0},
            calls={"notify_ttl": 4.0},
            notify={"to": ["did"], "dids": {"5551000": [7], "5552000": [8]}},
            daemon={"shutdown_timeout": 1.0},
        )
        daemon = Daemon(config)
        serving = asyncio.create_task(daemon.serve())
        with capture_logs() as logs:
            await wait_for(lambda: daemon.ami_connected)
            ami.emit_raw(burst)
            running = daemon._running
            assert running is not None
            await wait_for(lambda: running.events >= FLOOD, timeout=30)
            await asyncio.sleep(1.0)
            placed = time.monotonic()
            await ami.play(real.events)
            await wait_for(
                lambda: any(e.phone_number == REAL_CALLER for e in kommo.events), timeout=3
            )
            notified_after = time.monotonic() - placed
            tables = daemon.table_sizes()
            assert tables["pending"] <= MAX_PENDING_CALLS
            # after notify_ttl every stale request has left the limiter without a slot
            await wait_for(lambda: daemon.table_sizes()["limiter_waiting"] == 0, timeout=8)
            dropped = dict(running.notifier.stats.dropped)
            stop_asked = time.monotonic()
            daemon.stop.set()
            assert await serving == EXIT_OK
            stopped_after = time.monotonic() - stop_asked
    assert notified_after < 2.0, notified_after
    # every call beyond the newest MAX_PENDING_CALLS is shed, but for the few whose Kommo
    # work (notification and lookup) was done before the table filled: at most the first
    # second's 7 requests' worth (the first call's lookup goes out at once)
    assert FLOOD + 1 - MAX_PENDING_CALLS - 7 <= dropped["shed"] <= FLOOD + 1 - MAX_PENDING_CALLS
    assert kommo.violations == 0
    shed_lines = [x for x in events(logs, "kommo.notify_dropped") if x["reason"] == "shed"]
    assert 1 <= len(shed_lines) <= 3  # rate-limited, not one line per call (and one at stop)
    # a flood's calls shed before they were begun are counted, not logged one by one
    incoming = events(logs, "call.incoming")
    folded = sum(x["incoming"] for x in events(logs, "calls.folded"))
    assert folded > 0
    assert len(incoming) + folded == FLOOD + 1
    assert any(x["caller"].endswith(REAL_CALLER) for x in incoming)  # a normal call: its line
    assert stopped_after < 1.0 + 1.0, stopped_after
