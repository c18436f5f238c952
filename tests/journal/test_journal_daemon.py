"""The journal inside the daemon: finished calls handed to its sink reach Kommo, and
/healthz, /metrics and the stats line count them."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from kommo_callerid.core.models import CallStatus
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, finished_call, make_config, running_daemon, wait_for

LOCAL = {"listen": "127.0.0.1:0"}


async def test_sink_to_kommo_with_health_metrics_and_stats(ami: FakeAmiServer) -> None:
    async with FakeKommo(demo_dataset()) as kommo:
        kommo.journal.reject_numbers.add("12125550142")
        config = make_config(ami, kommo, http={"listen": "127.0.0.1:0"})
        with capture_logs() as logs:
            async with running_daemon(config) as daemon, aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{daemon.http_port}"
                kommo.journal.down = True
                daemon.record_finished_call(finished_call("8.1", "+18305803077"))
                daemon.record_finished_call(finished_call("8.2", "+12125550142"))
                await wait_for(lambda: kommo.requests_to("/api/v4/calls") >= 1)
                async with http.get(f"{base}/healthz") as answer:
                    assert (await answer.json())["journal_pending"] == 2
                kommo.journal.down = False
                miss = finished_call("8.3", "+14155550199", status=CallStatus.NO_ANSWER)
                daemon.record_finished_call(miss)  # wakes the sender: all three go now
                await wait_for(lambda: len(kommo.journal.calls) == 2)
                await wait_for(lambda: daemon._counters(daemon._running)["journal_pending"] == 0)  # type: ignore[arg-type]
                async with http.get(f"{base}/metrics") as answer:
                    metrics = await answer.text()
    assert "kommo_callerid_journal_sent_total 2.0" in metrics
    assert 'kommo_callerid_journal_dropped_total{reason="rejected"} 1.0' in metrics
    assert "kommo_callerid_journal_pending 0.0" in metrics
    [stopped] = events(logs, "daemon.stopped")
    assert (stopped["journal_sent"], stopped["journal_dropped"]) == (2, 1)
    assert stopped["journal_recorded"] == 3


async def test_disabled_journal_opens_no_database(ami: FakeAmiServer, tmp_path: Path) -> None:
    database = tmp_path / "journal.sqlite3"
    async with FakeKommo(demo_dataset()) as kommo:
        config = make_config(
            ami, kommo, journal={"enabled": False, "database": str(database)}, http=LOCAL
        )
        async with running_daemon(config) as daemon, aiohttp.ClientSession() as http:
            daemon.record_finished_call(finished_call("10.1", "+18305803077"))  # a debug line
            async with http.get(f"http://127.0.0.1:{daemon.http_port}/healthz") as answer:
                assert (await answer.json())["journal_pending"] is None
    assert not database.exists()
    assert kommo.journal.calls == []


async def test_calls_lost_with_the_ami_link_are_counted_as_untracked(ami: FakeAmiServer) -> None:
    """A call that ends while the AMI link is down can never be journaled (its Hangups are in
    the gap): /metrics and the stats line say so, by reason, instead of losing it silently."""
    call = CallScenarios().inbound("18305803077", agents=())
    async with FakeKommo(demo_dataset()) as kommo:
        config = make_config(ami, kommo, http=LOCAL)
        with capture_logs() as logs:
            async with running_daemon(config) as daemon, aiohttp.ClientSession() as http:
                await ami.play(call.events)
                await wait_for(lambda: daemon.table_sizes()["outcomes"] == 1)
                ami.users[DEMO_USERNAME] = AmiUser("changed-by-the-admin")  # no relogin yet
                ami.drop()
                await wait_for(lambda: ami.login_failures >= 1)
                await ami.play(call.hangups)  # nobody hears them
                ami.users[DEMO_USERNAME] = AmiUser(DEMO_SECRET)
                await wait_for(lambda: daemon.table_sizes()["outcomes"] == 0)
                async with http.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as answer:
                    metrics = await answer.text()
    assert 'kommo_callerid_journal_untracked_total{reason="link_lost"} 1.0' in metrics
    assert 'kommo_callerid_journal_untracked_total{reason="overflow"} 0.0' in metrics
    [stopped] = events(logs, "daemon.stopped")
    assert stopped["journal_untracked"] == 1
