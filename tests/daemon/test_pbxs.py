"""Several PBXs in one daemon: two fake AMI servers, one pipeline, one fake Kommo."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.core.models import FinishedCall
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.daemon.systemd import SystemdNotifier
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

from support import events, running_daemon, temp_journal, wait_for

DID = "5551000"
#: Short AMI timers, so a hung PBX goes through ping timeouts and reconnects during a test.
FAST_AMI = {
    "ping_interval": 0.2,
    "ping_timeout": 0.3,
    "connect_timeout": 0.5,
    "reconnect_min": 0.05,
    "reconnect_max": 0.2,
}


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


@pytest.fixture
async def north() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer() as server:
        yield server


@pytest.fixture
async def south() -> AsyncIterator[FakeAmiServer]:
    server = FakeAmiServer()
    await server.start()
    try:
        yield server
    finally:
        server.unhang()  # a hung fake would keep its sessions open
        await server.stop()


def pbx_config(
    pbxs: Mapping[str, FakeAmiServer], kommo: FakeKommo, /, **sections: dict[str, Any]
) -> Config:
    data: dict[str, Any] = {
        "ami": {
            "username": DEMO_USERNAME,
            "secret": DEMO_SECRET,
            **FAST_AMI,
            **{name: {"port": server.port} for name, server in pbxs.items()},
        },
        "kommo": {"base_url": kommo.base_url, "access_token": kommo.token, "rate_limit": 1000},
        "notify": {"fallback_after": 0.3},
        "daemon": {"shutdown_timeout": 2.0},
        "journal": {"database": temp_journal()},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    for name in pbxs:  # a test may give a PBX its own keys: keep its port
        data["ami"][name] = {"port": pbxs[name].port, **sections.get("ami", {}).get(name, {})}
    return from_mapping(data)


async def test_the_same_linkedid_on_two_pbxs_is_two_calls(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    # Two PBXs started at the same second hand out the same Uniqueids and Linkedids.
    north_call = CallScenarios().inbound("18305803077", agents=())
    south_call = CallScenarios().inbound("14155550199", agents=())
    assert north_call.linkedid == south_call.linkedid
    config = pbx_config({"north": north, "south": south}, kommo, notify={"to": ["responsible"]})
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with running_daemon(config):
            await north.play(north_call.events)
            await south.play(south_call.events)
            await wait_for(lambda: len(kommo.events) == 2)
    incoming = {(line["pbx"], line["call_id"]) for line in events(logs, "call.incoming")}
    linkedid = north_call.linkedid
    assert incoming == {("north", f"north/{linkedid}"), ("south", f"south/{linkedid}")}
    notified = {line["call_id"] for line in events(logs, "kommo.notified")}
    assert notified == {f"north/{linkedid}", f"south/{linkedid}"}
    connected = {line.get("pbx") for line in events(logs, "ami.connected")}
    assert connected == {"north", "south"}
    (stopped,) = events(logs, "daemon.stopped")
    assert set(stopped["pbx"]) == {"north", "south"}
    assert stopped["pbx"]["north"]["events_received"] == len(north_call.events)


async def test_a_wrong_secret_on_one_pbx_at_start_exits_3(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    config = pbx_config({"north": north, "south": south}, kommo, ami={"south": {"secret": "no"}})
    with capture_logs(processors=[merge_contextvars]) as logs:
        assert await Daemon(config).serve() == 3
    assert [line.get("pbx") for line in events(logs, "ami.login_failed")] == ["south"]


async def test_extension_keys_route_per_pbx(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    notify = {
        "to": ["ringing", "did"],
        "extensions": {"north/101": 111, "south/101": 222, "100": 333},
        "dids": {f"north/{DID}": [444], DID: [555]},
    }
    config = pbx_config({"north": north, "south": south}, kommo, notify=notify)
    scenarios = CallScenarios()
    north_call = scenarios.inbound("18305803077", agents=("101", "100"), via_local=False)
    south_call = scenarios.inbound("14155550199", agents=("101", "100"), via_local=False)
    async with running_daemon(config):
        await north.play(north_call.events)
        await south.play(south_call.events)
        await wait_for(lambda: sum(map(len, users_of(kommo).values())) == 6)
    notified = users_of(kommo)
    assert notified["18305803077"] == {444, 111, 333}  # north/ keys win over bare keys
    assert notified["14155550199"] == {555, 222, 333}  # bare keys for the PBX without its own


def users_of(kommo: FakeKommo) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for event in kommo.events:
        found.setdefault(event.phone_number, set()).update(event.users or ())
    return found


async def burst_latencies(
    pbx: FakeAmiServer, kommo: FakeKommo, calls: list[SyntheticCall]
) -> list[float]:
    """Seconds from playing each call to Kommo receiving its DID notification."""
    played: dict[str, float] = {}
    for call in calls:
        played[call.caller_num] = time.monotonic()  # the fake Kommo's clock
        await pbx.play(call.events)
        await asyncio.sleep(0.02)  # 50 calls over ~1 s: the hung PBX's timers run meanwhile
    wanted = {call.caller_num for call in calls}
    await wait_for(lambda: wanted <= {e.phone_number for e in kommo.events}, timeout=10)
    first: dict[str, float] = {}
    for event in kommo.events:
        first.setdefault(event.phone_number, event.received_at)
    return [first[caller] - played[caller] for caller in wanted]


async def test_a_hung_pbx_never_delays_another(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    # South's waits are long, so anything that waited on them would show as a second's delay.
    config = pbx_config(
        {"north": north, "south": south},
        kommo,
        ami={"south": {"ping_timeout": 1.0, "connect_timeout": 1.5}},
        notify={"to": ["did"], "dids": {DID: [7]}},
    )
    scenarios = CallScenarios()
    async with running_daemon(config) as daemon:
        healthy = await burst_latencies(north, kommo, scenarios.inbound_calls(50, did=DID))
        kommo.events.clear()
        south.hang()  # logged in, then never answers again: Pings time out, logins too
        await wait_for(lambda: not daemon.ami_connected, timeout=3)
        hung = await burst_latencies(north, kommo, scenarios.inbound_calls(50, did=DID))
        assert not daemon.ami_connected  # south stayed down all along
    assert len(hung) == 50
    figures = {
        name: summary_ms(run) for name, run in (("both healthy", healthy), ("south hung", hung))
    }
    print("\nnorth, 50 calls, notification latency:", figures)
    assert figures["south hung"]["p95"] < figures["both healthy"]["p95"] + 500


def summary_ms(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=20)
    ms = {"p50": statistics.median(seconds), "p95": cuts[-1], "max": max(seconds)}
    return {name: round(value * 1000, 1) for name, value in ms.items()}


async def test_health_and_metrics_per_pbx(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    config = pbx_config({"north": north, "south": south}, kommo, http={"listen": "127.0.0.1:0"})
    async with running_daemon(config) as daemon, aiohttp.ClientSession() as client:
        status, body = await health(client, daemon)
        assert (status, body["ami"], body["pbx"]) == (
            200,
            "connected",
            {"north": "connected", "south": "connected"},
        )
        south.hang()
        await wait_for(lambda: not daemon.ami_connected, timeout=3)
        status, body = await health(client, daemon)
        assert (status, body["pbx"]) == (503, {"north": "connected", "south": "disconnected"})
        async with client.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as answer:
            metrics = await answer.text()
    assert 'kommo_callerid_ami_connected{pbx="north"} 1.0' in metrics
    assert 'kommo_callerid_ami_connected{pbx="south"} 0.0' in metrics
    assert 'kommo_callerid_ami_events_discarded_total{pbx="north",reason="dropped"} 0.0' in metrics


async def health(client: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with client.get(f"http://127.0.0.1:{daemon.http_port}/healthz") as answer:
        return answer.status, await answer.json()


async def test_systemd_status_names_each_pbx(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo, tmp_path: Path
) -> None:
    config = pbx_config({"north": north, "south": south}, kommo)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        daemon = Daemon(
            config, systemd=SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        )
        serving = asyncio.create_task(daemon.serve())
        await wait_for(lambda: daemon.ami_connected)
        south.hang()
        await wait_for(lambda: not daemon.ami_connected, timeout=3)
        daemon.stop.set()
        assert await serving == 0
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    statuses = [line for message in messages for line in message.splitlines() if "AMI" in line]
    assert "STATUS=AMI north connected, south connected; calls 0; notified 0; dropped 0" in statuses
    assert any(s.startswith("STATUS=AMI north connected, south disconnected;") for s in statuses)


class CollectingSink:
    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call)


async def test_finished_calls_carry_their_pbx(
    north: FakeAmiServer, south: FakeAmiServer, kommo: FakeKommo
) -> None:
    north_call = CallScenarios().inbound("18305803077", agents=("101",))
    south_call = CallScenarios().inbound("14155550199", agents=("101",))
    sink = CollectingSink()
    config = pbx_config({"north": north, "south": south}, kommo)
    daemon = Daemon(config, journal_sink=sink)
    serving = asyncio.create_task(daemon.serve())
    await wait_for(lambda: daemon.ami_connected)
    for pbx, call in ((north, north_call), (south, south_call)):
        await pbx.play(call.events)
        await pbx.play(call.hangups)
    await wait_for(lambda: len(sink.calls) == 2)
    daemon.stop.set()
    assert await serving == 0
    linkedid = north_call.linkedid
    finished = {(call.pbx, call.call_id, call.phone) for call in sink.calls}
    assert finished == {
        ("north", f"north/{linkedid}", "18305803077"),
        ("south", f"south/{linkedid}", "14155550199"),
    }
