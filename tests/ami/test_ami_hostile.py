"""A hostile or odd AMI peer (issue 13): unanswered Filter/Events, events before the Login
answer, LF-only or CR-only messages, wrong ports and TLS mismatches, a PBX that drops the
link every few seconds. Real sockets throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.supervisor import AmiSupervisor
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.recording import format_message
from kommo_callerid.sim.scenarios import CallScenarios

from support import events, make_config, refused_port, running_daemon, wait_for

DID = {"dids": {"5551000": [7]}, "to": ["did"]}
EventQueue = asyncio.Queue[ChannelEvent]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset(), rate_limit=None) as server:
        yield server


def config_for(port: int, **overrides: object) -> AmiConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": DEMO_USERNAME,
        "secret": SecretStr(DEMO_SECRET),
        "connect_timeout": 0.5,
        "reconnect_min": 0.05,
        "reconnect_max": 0.4,
    }
    return AmiConfig.model_validate(values | overrides)


def newchannel(uniqueid: str) -> dict[str, str]:
    return {
        "Event": "Newchannel",
        "Privilege": "call,all",
        "Channel": "PJSIP/carrier-00000001",
        "CallerIDNum": "18305803077",
        "CallerIDName": "John",
        "Context": "from-trunk",
        "Exten": "5551000",
        "Uniqueid": uniqueid,
        "Linkedid": uniqueid,
    }


async def read_action(reader: asyncio.StreamReader) -> dict[str, str]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode().strip().split("\r\n")
    return dict(line.split(": ", 1) for line in lines if ": " in line)


# ---- point 2: an unanswered Filter or Events never crashes the daemon ----


@pytest.mark.parametrize("action", ["filter", "events"])
async def test_an_unanswered_subscription_action_reconnects_and_filters_here(
    ami: FakeAmiServer, kommo: FakeKommo, action: str
) -> None:
    ami.unanswered = {action}
    config = make_config(ami, kommo, notify=DID, ami={"ping_timeout": 0.2})
    with capture_logs() as logs:
        async with running_daemon(config):
            assert ami.logins == 2  # the first session was dropped, the second works
            call = CallScenarios().inbound("18305803077")
            await ami.play(call.events)
            await wait_for(lambda: len(kommo.events) == 1)
    refused = events(logs, "ami.filter_refused")
    assert refused[0]["reason"] == f"no answer to {action.capitalize()} within 0.2 s"
    assert not events(logs, "daemon.crashed")
    second = ami.actions[
        ami.actions.index(next(a for a in ami.actions[1:] if a["action"] == "Login")) :
    ]
    assert not any(a["action"] in ("Filter", "Events") for a in second)


# ---- point 11: events before the Login answer ----


async def test_events_before_the_login_answer_are_ignored() -> None:
    async def pbx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/6.0.0\r\n")
        login = await read_action(reader)
        writer.write(format_message(newchannel("early.1")))
        answer = {"Response": "Success", "ActionID": login["ActionID"], "Message": "ok"}
        writer.write(format_message(answer) + format_message(newchannel("late.1")))
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(pbx, "127.0.0.1", 0)
    queue: EventQueue = asyncio.Queue()
    client = AmiClient(config_for(server.sockets[0].getsockname()[1]), queue)
    try:
        await client.connect()
        first = await asyncio.wait_for(queue.get(), 2)
        assert first.uniqueid == "late.1" and queue.empty()
        assert client.counters.ignored == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


# ---- point 12: a LF-only or CR-only message does not swallow the next one ----


@pytest.mark.parametrize("newline", [b"\n", b"\r"], ids=["LF only", "CR only"])
async def test_a_message_with_foreign_line_ends_is_counted_and_the_next_arrives(
    ami: FakeAmiServer, newline: bytes
) -> None:
    queue: EventQueue = asyncio.Queue()
    client = AmiClient(config_for(ami.port), queue)
    await client.connect()
    try:
        foreign = format_message(newchannel("bad.1")).replace(b"\r\n", newline)
        ami.emit_raw(foreign + format_message(newchannel("good.1")))
        ami.emit_raw(foreign + foreign + format_message(newchannel("good.2")))
        await client.send_action({"Action": "Ping"}, timeout=2)
        got = [queue.get_nowait().uniqueid for _ in range(queue.qsize())]
        assert got == ["good.1", "good.2"]
        assert client.counters.garbage == 2  # each run of foreign messages, counted once
    finally:
        await client.close()


# ---- point 13: a wrong port, a non-AMI service, a TLS mismatch say what is wrong ----


async def _two_attempts(config: AmiConfig) -> list[dict[str, object]]:
    queue: EventQueue = asyncio.Queue()
    supervisor = AmiSupervisor(config, lambda: AmiClient(config, queue))
    with capture_logs() as logs:
        task = asyncio.create_task(supervisor.run())
        await wait_for(lambda: len(events(logs, "ami.reconnect_scheduled")) >= 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [dict(line) for line in events(logs, "ami.reconnect_scheduled")]


async def _http_server() -> asyncio.Server:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(http, "127.0.0.1", 0)


async def test_a_closed_port_is_a_warning_with_a_hint() -> None:
    with refused_port() as port:
        scheduled = await _two_attempts(config_for(port))
    assert scheduled[0]["log_level"] == "warning"
    assert "refused" in str(scheduled[0]["reason"]).lower()
    assert "nothing listens on" in str(scheduled[0]["hint"])


async def test_a_service_that_is_not_ami_is_a_warning_with_a_hint() -> None:
    server = await _http_server()
    try:
        scheduled = await _two_attempts(config_for(server.sockets[0].getsockname()[1]))
    finally:
        server.close()
        await server.wait_closed()
    assert scheduled[0]["log_level"] == "warning"
    assert "not an AMI server" in str(scheduled[0]["reason"])
    assert "check [ami] port" in str(scheduled[0]["hint"])


async def test_tls_against_a_plain_ami_port_is_a_warning_with_a_hint(ami: FakeAmiServer) -> None:
    scheduled = await _two_attempts(config_for(ami.port, tls=True))
    assert scheduled[0]["log_level"] == "warning"
    assert "does not speak TLS" in str(scheduled[0]["hint"]) or "banner" in str(
        scheduled[0]["hint"]
    )


# ---- point 16: a PBX that drops the link every few seconds ----


async def test_a_working_link_that_drops_reconnects_within_reconnect_min(
    ami: FakeAmiServer,
) -> None:
    config = config_for(ami.port, reconnect_min=0.05, reconnect_max=5.0)
    queue: EventQueue = asyncio.Queue()
    supervisor = AmiSupervisor(config, lambda: AmiClient(config, queue))
    task = asyncio.create_task(supervisor.run())
    gaps = []
    try:
        for drop in range(1, 5):
            await ami.wait_logged_in(drop)
            await asyncio.sleep(1.1)  # a session that worked (longer than 1 s)
            dropped_at = time.monotonic()
            ami.drop()
            await ami.wait_logged_in(drop + 1)
            gaps.append(time.monotonic() - dropped_at)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert max(gaps) < 0.05 + 0.15, gaps  # before: 0.05, 0.1, 0.2, 0.4 s plus jitter


async def test_a_server_that_drops_at_once_still_meets_a_growing_backoff(
    ami: FakeAmiServer,
) -> None:
    config = config_for(ami.port, reconnect_min=0.02, reconnect_max=0.16)
    queue: EventQueue = asyncio.Queue()
    supervisor = AmiSupervisor(config, lambda: AmiClient(config, queue))
    with capture_logs() as logs:
        task = asyncio.create_task(supervisor.run())
        try:
            for login in range(1, 6):
                await ami.wait_logged_in(login)
                ami.drop()  # at once: a session shorter than a second
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    attempts = [line["attempt"] for line in events(logs, "ami.reconnect_scheduled")]
    assert attempts[:4] == [1, 2, 3, 4]


# ---- point 1 (sibling): a busy link is not a dead link ----


async def test_a_link_busy_with_events_is_alive_though_its_pong_is_late(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    ami.unanswered = {"ping"}  # the Pong is stuck behind a flood, as far as the daemon can tell
    config = make_config(ami, kommo, ami={"ping_interval": 0.2, "ping_timeout": 0.2})
    noise = format_message({"Event": "Newchannel", "Privilege": "call,all", "Uniqueid": ""})
    with capture_logs() as logs:
        async with running_daemon(config) as daemon:
            for _ in range(30):  # 1.5 s of traffic: several Pings go unanswered meanwhile
                ami.emit_raw(noise)
                await asyncio.sleep(0.05)
            assert daemon.ami_connected and ami.logins == 1
            await wait_for(lambda: not daemon.ami_connected, timeout=2)  # silence: dead
    lost = events(logs, "ami.disconnected")
    assert lost[0]["reason"] == "no answer to Ping within 0.2 s"


# ---- issue 18, point 13: a PBX that drops the link after sub-second working sessions ----


async def test_short_sessions_that_delivered_a_call_event_reconnect_within_3_s(
    ami: FakeAmiServer,
) -> None:
    config = config_for(ami.port, reconnect_min=0.5, reconnect_max=30.0)  # the defaults
    queue: EventQueue = asyncio.Queue()
    supervisor = AmiSupervisor(config, lambda: AmiClient(config, queue))
    task = asyncio.create_task(supervisor.run())
    gaps = []
    try:
        for session in range(1, 11):
            await ami.wait_logged_in(session, timeout=60)
            ami.emit(newchannel(f"1700000000.{session}"))
            await wait_for(lambda n=session: queue.qsize() >= n)  # the session delivered it
            dropped_at = time.monotonic()
            ami.drop()  # well under a second after the login
            await ami.wait_logged_in(session + 1, timeout=60)
            gaps.append(time.monotonic() - dropped_at)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert max(gaps) <= 3.0, gaps  # before: the backoff grew with every drop, up to 8.3 s
