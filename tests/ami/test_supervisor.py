"""The supervised AMI link: reconnects, dead-link detection, login failures, filters,
re-sync after a gap, graceful stop and systemd notifications. Real sockets throughout."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.supervisor import EVENT_FILTERS, AmiSupervisor, Backoff
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for

DID = {"dids": {"5551000": [7]}, "to": ["did"]}  # one immediate notification per call


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset(), rate_limit=None) as server:
        yield server


def test_backoff_doubles_to_the_cap_with_jitter_never_below_the_minimum() -> None:
    top = Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    bottom = Backoff(0.5, 30.0, rng=lambda: 0.0)
    assert all(bottom.next_delay() == 0.5 for _ in range(10))
    top.reset()
    assert top.next_delay() == 0.5


async def test_twenty_drops_twenty_reconnects_every_call_notified_once(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    scenarios = CallScenarios()
    config = make_config(ami, kommo, notify=DID, kommo={"rate_limit": 1000.0})
    numbers: list[str] = []
    async with running_daemon(config) as daemon:
        running = daemon._running
        assert running is not None
        task_counts: list[int] = []
        for round_ in range(21):
            await wait_for(lambda: daemon.ami_connected)
            number = f"1830580{round_:04d}"
            numbers.append(number)
            call = scenarios.inbound(number, agents=("100",))
            await ami.play(call.events)
            await wait_for(lambda n=number: any(e.phone_number == n for e in kommo.events))
            await ami.play(call.hangups[:1])  # the call is still up when the link drops
            await wait_for(lambda: len(running.call_tasks) == 0)
            gc.collect()
            task_counts.append(len(asyncio.all_tasks()))
            if round_ == 20:
                break
            ami.drop()
            await wait_for(lambda: not daemon.ami_connected)
        assert task_counts[-1] == task_counts[1], task_counts  # no task growth
        assert len(running.tracker) <= 1  # only the last, still-ringing call
        assert running.links.reconnects == 20
    assert ami.logins == 21
    assert sorted(e.phone_number for e in kommo.events) == sorted(numbers)  # each exactly once


async def test_a_hung_asterisk_is_detected_within_ping_interval_plus_timeout(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    interval, timeout = 0.3, 0.2
    config = make_config(ami, kommo, ami={"ping_interval": interval, "ping_timeout": timeout})
    with capture_logs() as logs:
        async with running_daemon(config) as daemon:
            await asyncio.sleep(0.05)
            hung_at = time.monotonic()
            ami.hang()
            await wait_for(lambda: not daemon.ami_connected, timeout=5)
            detected = time.monotonic() - hung_at
            ami.unhang()
            await wait_for(lambda: daemon.ami_connected, timeout=5)
    assert detected <= interval + timeout + 0.15, detected
    lost = [x for x in logs if x["event"] == "ami.disconnected"]
    assert lost[0]["reason"] == f"no answer to Ping within {timeout:g} s"


async def test_wrong_secret_after_a_session_is_retried_with_growing_delays(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    config = make_config(ami, kommo, ami={"reconnect_min": 0.02, "reconnect_max": 0.16})
    with capture_logs() as logs:
        async with running_daemon(config) as daemon:
            ami.users[DEMO_USERNAME] = AmiUser("changed-by-the-admin")
            ami.drop()
            await wait_for(lambda: ami.login_failures >= 6, timeout=5)
            ami.users[DEMO_USERNAME] = AmiUser(DEMO_SECRET)
            await wait_for(lambda: daemon.ami_connected, timeout=5)
    failures = [x for x in logs if x["event"] == "ami.login_failed"]
    assert len(failures) >= 6 and failures[0]["message"] == "Authentication failed"
    scheduled = [x for x in logs if x["event"] == "ami.reconnect_scheduled"]
    assert [x["attempt"] for x in scheduled[:6]] == [1, 2, 3, 4, 5, 6]
    assert all(x["delay"] >= 0.02 for x in scheduled)
    assert max(x["delay"] for x in scheduled) <= 0.16


async def test_filters_are_sent_after_every_login(ami: FakeAmiServer, kommo: FakeKommo) -> None:
    async with running_daemon(make_config(ami, kommo)) as daemon:
        ami.drop()
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
    for session in ami.sessions:
        assert session.filters == list(EVENT_FILTERS)
        assert session.event_classes == frozenset({"call"})


async def test_refused_filter_warns_and_calls_are_still_detected(kommo: FakeKommo) -> None:
    user = AmiUser(DEMO_SECRET, write=frozenset())  # no `system` write class: Filter refused
    async with FakeAmiServer(users={DEMO_USERNAME: user}) as ami:
        with capture_logs() as logs:
            async with running_daemon(make_config(ami, kommo, notify=DID)):
                await ami.play(CallScenarios().inbound("18305803077").events)
                await wait_for(lambda: len(kommo.events) == 1)
    refused = [x for x in logs if x["event"] == "ami.filter_refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"


async def test_state_from_before_a_gap_is_not_trusted_nor_notified_again(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    call = CallScenarios().inbound("18305803077", agents=("100", "101"))
    config = make_config(ami, kommo, notify={**DID, "extensions": {"101": 9}, "to": ["did"]})
    async with running_daemon(config) as daemon:
        await ami.play(call.events[:1])  # the root channel only
        await wait_for(lambda: len(kommo.events) == 1)
        ami.drop()
        await wait_for(lambda: ami.logins == 2 and daemon.ami_connected)
        await ami.play(call.events)  # the same call seen again after the reconnect
        await asyncio.sleep(0.3)
        running = daemon._running
        assert running is not None and running.notifier.stats.skipped["duplicate"] >= 1
    assert len(kommo.events) == 1


async def test_sigterm_lets_in_flight_notifications_finish_and_talks_to_systemd(
    tmp_path: Path, ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    config = tmp_path / "cfg.toml"
    config.write_text(
        f'[ami]\nport = {ami.port}\nusername = "{DEMO_USERNAME}"\nsecret = "{DEMO_SECRET}"\n'
        f'[kommo]\nbase_url = "{kommo.base_url}"\naccess_token = "{kommo.token}"\n'
        '[notify]\nto = ["did"]\n[notify.dids]\n"5551000" = [7]\n[log]\nformat = "json"\n'
        f'[journal]\ndatabase = "{tmp_path / "journal.sqlite3"}"\n'
    )
    kommo.set_delay(EVENTS_PATH, 1.0)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kommo_callerid", "run", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        await ami.wait_logged_in(timeout=10)
        await ami.play(CallScenarios().inbound("18305803077").events)
        await asyncio.sleep(0.3)  # the POST went out and is held by the fake for 1 s
        assert not kommo.events
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    sock.close()
    assert proc.returncode == 0, stderr.decode()
    assert len(kommo.events) == 1  # the in-flight notification completed
    stopped = [json.loads(x) for x in stdout.decode().splitlines() if "daemon.stopped" in x]
    assert stopped[0]["in_flight_cancelled"] == 0 and stopped[0]["notifications_sent"] == 1
    joined = "\n".join(messages)
    for state in ("READY=1", "STATUS=", "WATCHDOG=1", "STOPPING=1"):
        assert state in joined, (state, messages)


async def test_a_user_without_the_call_class_is_reported(kommo: FakeKommo) -> None:
    user = AmiUser(DEMO_SECRET, read=frozenset({"system"}))  # logs in, sees no call events
    async with FakeAmiServer(users={DEMO_USERNAME: user}) as ami:
        config = make_config(ami, kommo)
        link_factory = lambda: AmiClient(config.ami, asyncio.Queue())  # noqa: E731
        supervisor = AmiSupervisor(config.ami, link_factory, silence_warning_after=0.2)
        with capture_logs() as logs:
            task = asyncio.create_task(supervisor.run())
            await wait_for(lambda: any(x["event"] == "ami.no_call_events" for x in logs))
            await ami.play(CallScenarios().inbound("18305803077").events)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    warning = next(x for x in logs if x["event"] == "ami.no_call_events")
    assert "read = call" in warning["hint"]
