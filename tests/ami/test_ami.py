"""AmiClient against the fake AMI server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from panoramisk.manager import Manager
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.ami.client import (
    AmiActionRefused,
    AmiClient,
    AmiConnectionError,
    AmiLoginError,
    duration_seconds,
)
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import AmiSessionInfo, ChannelEvent, ChannelEventKind
from kommo_callerid.sim.ami_server import AmiUser, FakeAmiServer
from kommo_callerid.sim.recording import events_only, format_message, read_recording
from kommo_callerid.sim.scenarios import CallScenarios

from support import RECORDINGS, ManualClock, refused_port

ASTERISK_22 = sorted(
    p for p in (RECORDINGS / "asterisk-22").glob("*.txt") if not p.name.endswith(".actions.txt")
)
SECRET = "s3cret-only-in-tests"
PING = {"Action": "Ping"}

EventQueue = asyncio.Queue[ChannelEvent]


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    users = {
        "callerid": AmiUser(SECRET),
        "readonly": AmiUser("readonly-secret", write=frozenset()),
    }
    async with FakeAmiServer(users, version="11.0.0") as fake:
        yield fake


@pytest.fixture
def queue() -> EventQueue:
    return asyncio.Queue(maxsize=1000)


def ami_config(port: int, **overrides: object) -> AmiConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": "callerid",
        "secret": SecretStr(SECRET),
        "connect_timeout": 2.0,
    }
    return AmiConfig.model_validate(values | overrides)


@pytest.fixture
async def client(server: FakeAmiServer, queue: EventQueue) -> AsyncIterator[AmiClient]:
    ami = AmiClient(ami_config(server.port), queue)
    await ami.connect()
    yield ami
    await ami.close()


async def barrier(client: AmiClient) -> None:
    """Everything the server sent before has been handled: it answers in order."""
    await client.send_action(PING, timeout=2.0)


def drain(queue: EventQueue) -> list[ChannelEvent]:
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


async def one_shot_server(reply: bytes) -> asyncio.Server:
    """A TCP server that says ``reply`` to each client and hangs up."""

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


# ---- connect and login ----


async def test_connect_logs_in_and_returns_the_version(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    ami = AmiClient(ami_config(server.port), queue)
    assert await ami.connect() == AmiSessionInfo("127.0.0.1", server.port, "11.0.0")
    assert ami.connected
    login = server.actions[0]
    assert (login["action"], login["username"], login["events"]) == ("Login", "callerid", "on")
    await ami.close()


@pytest.mark.parametrize(("username", "secret"), [("callerid", "wrong"), ("nobody", SECRET)])
async def test_refused_login_raises_with_the_server_message(
    server: FakeAmiServer, queue: EventQueue, username: str, secret: str
) -> None:
    ami = AmiClient(ami_config(server.port, username=username, secret=SecretStr(secret)), queue)
    with pytest.raises(AmiLoginError, match=r"^Authentication failed$"):
        await ami.connect()
    assert await ami.wait_closed() == "Authentication failed"
    await ami.close()
    await asyncio.sleep(0.1)
    assert (server.connections, server.login_failures, server.logins) == (1, 1, 0)


async def test_refused_connection(queue: EventQueue) -> None:
    with refused_port() as port:
        ami = AmiClient(ami_config(port), queue)
        with pytest.raises(AmiConnectionError, match=r"cannot connect to 127\.0\.0\.1"):
            await ami.connect()
        assert "cannot connect" in await ami.wait_closed()
    await ami.close()


async def test_a_silent_server_times_out_within_connect_timeout(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    server.hang()
    ami = AmiClient(ami_config(server.port, connect_timeout=0.2), queue)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AmiConnectionError, match=r"no answer from .* within 0\.2 s"):
        await ami.connect()
    assert loop.time() - started < 1.0
    await ami.close()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not an AMI server: it said 'HTTP/1.1 400"),
        (b"Asterisk Call Manager/11.0.0\r\n", "connection closed by the server"),
    ],
)
async def test_a_server_that_is_not_ami_or_hangs_up_before_login(
    queue: EventQueue, reply: bytes, reason: str
) -> None:
    other = await one_shot_server(reply)
    async with other:
        ami = AmiClient(ami_config(other.sockets[0].getsockname()[1]), queue)
        with pytest.raises(AmiConnectionError, match=reason):
            await ami.connect()
        await ami.close()


async def test_cancelled_or_closed_connect_leaves_no_link(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    server.hang()
    cancelled = AmiClient(ami_config(server.port), queue)
    attempt = asyncio.create_task(cancelled.connect())
    await asyncio.sleep(0.05)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert await cancelled.wait_closed() == "connect cancelled"

    closed = AmiClient(ami_config(server.port), queue)
    attempt = asyncio.create_task(closed.connect())
    await asyncio.sleep(0.05)
    await closed.close()
    with pytest.raises(AmiConnectionError, match="closed by the client"):
        await attempt
    await cancelled.close()


async def test_the_secret_is_never_logged(
    server: FakeAmiServer,
    queue: EventQueue,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("DEBUG")
    with capture_logs() as logs:
        ami = AmiClient(ami_config(server.port), queue)
        await ami.connect()
        server.emit_raw(b"Event: Newchannel\r\n\r\n")  # invalid: logged as a warning
        await barrier(ami)
        await ami.close()
        wrong = AmiClient(ami_config(server.port, secret=SecretStr(SECRET + "x")), queue)
        with pytest.raises(AmiLoginError) as refused:
            await wrong.connect()
        await wrong.close()
    captured = capsys.readouterr()
    assert logs  # the invalid event was logged, so logging was live
    for text in (caplog.text, captured.out, captured.err, str(logs), repr(ami), str(refused.value)):
        assert SECRET not in text
    assert all(SECRET not in json.dumps(action) for action in server.actions)


# ---- channel events ----


async def test_channel_events_arrive_as_typed_values(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    ticks = iter(range(100, 200))
    ami = AmiClient(ami_config(server.port), queue, clock=lambda: float(next(ticks)))
    await ami.connect()
    call = CallScenarios().inbound("18305803077", did="5551000", agents=("100", "101"))
    await server.play(call.all_events)
    await barrier(ami)
    events = drain(queue)
    assert [e.kind for e in events] == [ChannelEventKind(e["Event"]) for e in call.all_events]
    assert events[0] == ChannelEvent(
        kind=ChannelEventKind.NEWCHANNEL,
        channel=call.events[0]["Channel"],
        uniqueid=call.linkedid,
        linkedid=call.linkedid,
        caller_num="18305803077",
        caller_name="John Doe",
        context="from-trunk",
        exten="5551000",
        received_at=100.0,
    )
    assert [e.received_at for e in events] == [float(100 + i) for i in range(len(events))]
    assert {e.linkedid for e in events} == {call.linkedid}
    assert ami.counters.received == ami.counters.delivered == len(events)
    await ami.close()


async def test_other_events_are_ignored(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    for name in ("Newstate", "VarSet", "DialBegin", "FullyBooted", "newchannel2", "Hangups"):
        server.emit({"Event": name, "Privilege": "call,all", "Uniqueid": "1.1"})
    await barrier(client)
    assert drain(queue) == []
    assert client.counters.received == 0


async def test_event_names_are_matched_whatever_their_case(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    server.emit({"Event": "NewCallerID", "Privilege": "call,all", "UniqueID": "7.1"})
    await barrier(client)
    [event] = drain(queue)
    assert (event.kind, event.uniqueid) == (ChannelEventKind.NEWCALLERID, "7.1")


async def test_missing_linkedid_equals_uniqueid_and_missing_fields_are_empty(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    # Asterisk 11 sends no Linkedid; a bare event lacks the caller fields too.
    server.emit({"Event": "Newchannel", "Privilege": "call,all", "Uniqueid": "1700000000.5"})
    await barrier(client)
    [event] = drain(queue)
    assert event.linkedid == event.uniqueid == "1700000000.5"
    assert (event.channel, event.caller_num, event.caller_name) == ("", "", "")
    assert (event.context, event.exten) == ("", "")


async def test_malformed_events_never_break_the_link(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    server.emit_raw(
        b"Event: Newchannel\r\nChannel: SIP/no-uniqueid\r\n\r\n"
        b"no colon here\r\nat all\r\n\r\n"
        b"Event: Hangup\r\nUniqueid: 1.1\r\nUniqueid: 1.2\r\nChannel: Local/a;1\r\n\r\n"
        b"Event: Newchannel\r\nUniqueid: 2.1\r\nCallerIDName: \xff\xfe name\r\n\r\n"
        b"Event: NewCallerid\r\nUniqueid\r\nLinkedid:\r\n\r\n"
        b"\r\n\r\n\r\n"
    )
    await barrier(client)
    events = drain(queue)
    assert [(e.kind, e.uniqueid) for e in events] == [
        (ChannelEventKind.HANGUP, "1.1"),
        (ChannelEventKind.NEWCHANNEL, "2.1"),
    ]
    assert events[1].caller_name == "ÿþ name"
    assert client.counters.invalid == 2  # the two without a Uniqueid
    assert client.connected


async def test_a_raising_handler_is_counted_and_the_link_survives(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    calls = 0

    def flaky_clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("clock failed")
        return 5.0

    ami = AmiClient(ami_config(server.port), queue, clock=flaky_clock)
    await ami.connect()
    call = CallScenarios().inbound(agents=())
    with capture_logs() as logs:
        await server.play(call.events + call.hangups)
        await barrier(ami)
    assert [e.kind for e in drain(queue)] == [ChannelEventKind.HANGUP]
    assert (ami.counters.received, ami.counters.delivered, ami.counters.invalid) == (2, 1, 1)
    assert [(log["event"], log["reason"]) for log in logs] == [
        ("ami.event_invalid", "handler failed: RuntimeError")
    ]
    assert ami.connected
    await ami.close()


async def test_a_utf8_name_split_between_reads_keeps_its_letters(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    data = format_message({"Event": "Newchannel", "CallerIDName": "José Ñandú", "Uniqueid": "3.1"})
    cut = data.index("é".encode()) + 1  # between the two bytes of é
    server.emit_raw(data[:cut])
    await asyncio.sleep(0.05)  # so the halves arrive in separate reads
    server.emit_raw(data[cut:])
    await barrier(client)
    [event] = drain(queue)
    assert event.caller_name == "José Ñandú"


async def test_a_full_queue_drops_and_counts_without_blocking(server: FakeAmiServer) -> None:
    small: EventQueue = asyncio.Queue(maxsize=2)
    ami = AmiClient(ami_config(server.port), small)
    await ami.connect()
    calls = CallScenarios()
    with capture_logs() as logs:
        for _ in range(5):
            server.emit(calls.inbound(agents=()).events[0])
        await barrier(ami)
    assert (ami.counters.received, ami.counters.delivered, ami.counters.dropped) == (5, 2, 3)
    assert [(log["event"], log["dropped"]) for log in logs] == [("ami.events_dropped", 1)]
    assert small.qsize() == 2
    assert ami.connected
    await ami.close()


# ---- end of the link ----


async def test_a_dropped_link_ends_the_session_and_nothing_reconnects(
    server: FakeAmiServer, queue: EventQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were panoramisk's own reconnect or ping timers ever armed, these make them fire at once.
    for key in ("reconnect_timeout", "ping_delay", "ping_interval"):
        monkeypatch.setitem(Manager.defaults, key, 0)
    ami = AmiClient(ami_config(server.port), queue)
    await ami.connect()
    server.drop()
    reason = await asyncio.wait_for(ami.wait_closed(), 2.0)
    assert reason.startswith("connection")
    assert not ami.connected
    await asyncio.sleep(0.3)
    assert server.connections == 1
    assert [action["action"] for action in server.actions] == ["Login"]
    with pytest.raises(AmiConnectionError, match=reason):
        await ami.send_action(PING, timeout=1.0)
    await ami.close()
    assert await ami.wait_closed() == reason  # the first reason stays


async def test_asterisk_shutting_down_ends_the_session(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.emit({"Event": "Shutdown", "Privilege": "system,all", "Shutdown": "Cleanly"})
    assert await asyncio.wait_for(client.wait_closed(), 2.0) == "Asterisk is shutting down"


async def test_close_is_final_idempotent_and_leaves_nothing_behind(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    ami = AmiClient(ami_config(server.port), queue)
    await ami.connect()
    await ami.close()
    await ami.close()
    assert await ami.wait_closed() == "closed by the client"
    with pytest.raises(RuntimeError, match="one session"):
        await ami.connect()
    with pytest.raises(AmiConnectionError, match="closed by the client"):
        await ami.send_action(PING, timeout=1.0)
    await asyncio.wait_for(server.sessions[0].done.wait(), 2.0)
    assert [action["action"] for action in server.actions] == ["Login", "Logoff"]
    assert asyncio.all_tasks() == {asyncio.current_task()}


# ---- actions ----


async def test_ping_returns_pong_with_the_action_id(client: AmiClient) -> None:
    answer = await client.send_action({"Action": "Ping", "ActionID": "ping-10"}, timeout=2.0)
    assert list(answer) == ["Response", "ActionID", "Ping", "Timestamp"]
    assert (answer["Response"], answer["ActionID"], answer["Ping"]) == (
        "Success",
        "ping-10",
        "Pong",
    )


async def test_filter_allowed_is_recorded_and_applied(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    action = {"Action": "Filter", "Operation": "Add", "Filter": "Event: Newchannel"}
    answer = await client.send_action(action, timeout=2.0)
    assert (answer["Response"], answer["Message"]) == ("Success", "Filter Added Successfully")
    assert server.sessions[-1].filters == ["Event: Newchannel"]
    await server.play(CallScenarios().inbound().all_events)
    await barrier(client)
    assert {e.kind for e in drain(queue)} == {ChannelEventKind.NEWCHANNEL}


async def test_filter_refused_without_the_system_write_class(
    server: FakeAmiServer, queue: EventQueue
) -> None:
    config = ami_config(server.port, username="readonly", secret=SecretStr("readonly-secret"))
    ami = AmiClient(config, queue)
    await ami.connect()
    action = {"Action": "Filter", "Operation": "Add", "Filter": "Event: Newchannel"}
    answer = await ami.send_action(action, timeout=2.0)
    assert (answer["Response"], answer["Message"]) == ("Error", "Permission denied")
    assert server.sessions[-1].filters == []
    await ami.close()


async def test_add_filter_raises_the_servers_refusal(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    await client.add_filter("Event: Hangup", timeout=2.0)
    assert server.sessions[-1].filters == ["Event: Hangup"]
    config = ami_config(server.port, username="readonly", secret=SecretStr("readonly-secret"))
    readonly = AmiClient(config, queue)
    await readonly.connect()
    with pytest.raises(AmiActionRefused, match="Permission denied"):
        await readonly.add_filter("Event: Hangup", timeout=2.0)
    await readonly.close()


async def test_active_channels_lists_uniqueids_and_needs_write_system(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    assert await client.active_channels(timeout=2.0) == frozenset()
    server.channels = [
        {"Channel": "IAX2/carrier-1", "Uniqueid": "1700000000.1", "Context": "from-trunk"},
        {"Channel": "PJSIP/101-00000001", "Uniqueid": "1700000000.2", "Context": "agents"},
    ]
    assert await client.active_channels(timeout=2.0) == {"1700000000.1", "1700000000.2"}
    assert drain(queue) == []  # list items answer the action; they are no channel events
    config = ami_config(server.port, username="readonly", secret=SecretStr("readonly-secret"))
    readonly = AmiClient(config, queue)
    await readonly.connect()
    with pytest.raises(AmiActionRefused, match="Permission denied"):
        await readonly.active_channels(timeout=2.0)
    await readonly.close()


async def test_list_channels_gives_the_calls_up_from_the_pbx_as_typed_events(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    call = CallScenarios().inbound(agents=("100",), via_local=False)
    server.pbx_channels.clock = clock = ManualClock()
    await server.play(call.events)  # the fake PBX keeps the channels its events made
    clock.advance(3 * 3600 + 65.5)
    listed = await client.list_channels(timeout=2.0)
    assert {e.kind for e in listed} == {ChannelEventKind.CHANNEL_UP}
    root, phone = sorted(listed, key=lambda e: e.uniqueid != e.linkedid)
    assert (root.uniqueid, root.linkedid, root.context, root.exten) == (
        call.linkedid,
        call.linkedid,
        "from-trunk",
        "5551000",
    )
    assert (root.caller_num, phone.linkedid) == ("18305803077", call.linkedid)
    assert root.bridge_id == phone.bridge_id != ""
    assert [e.age for e in listed] == [3 * 3600 + 65] * 2  # Duration: 03:01:05
    assert all(e.has_linkedid for e in listed)
    await server.play(call.hangups)
    assert await client.list_channels(timeout=2.0) == []
    assert [e.kind for e in drain(queue)].count(ChannelEventKind.CHANNEL_UP) == 0


def test_duration_is_read_as_asterisk_lists_it() -> None:
    assert duration_seconds("00:00:07") == 7
    assert duration_seconds("27:03:10") == 27 * 3600 + 190
    assert duration_seconds("42") == 42
    assert duration_seconds("") == duration_seconds("1:x") == 0


async def test_a_channel_hung_up_while_the_list_comes_is_not_listed(
    server: FakeAmiServer, client: AmiClient
) -> None:
    """Asterisk may list a channel and send its Hangup first: it must not come back."""
    gone = {"Channel": "PJSIP/100-00000001", "Uniqueid": "1.1", "Linkedid": "1.1"}
    server.channels = [
        gone,
        {"Channel": "PJSIP/101-00000002", "Uniqueid": "1.2", "Linkedid": "1.2"},
    ]
    listing = asyncio.create_task(client.list_channels(timeout=2.0))
    await asyncio.sleep(0)  # the action is on its way; the Hangup overtakes its answer
    server.emit({"Event": "Hangup", "Privilege": "call,all", **gone, "Cause": "16"})
    assert [e.uniqueid for e in await listing] == ["1.2"]


async def test_an_unknown_action_gets_the_error_response(client: AmiClient) -> None:
    answer = await client.send_action({"Action": "Frobnicate"}, timeout=2.0)
    assert (answer["Response"], answer["Message"]) == ("Error", "Invalid/unknown command")


async def test_an_unanswered_action_times_out_and_its_late_answer_is_ignored(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.hang()
    with pytest.raises(TimeoutError):
        await client.send_action({"Action": "Ping", "ActionID": "late"}, timeout=0.1)
    server.unhang()
    answer = await client.send_action({"Action": "Ping", "ActionID": "fresh"}, timeout=2.0)
    assert answer["ActionID"] == "fresh"
    assert client.connected


async def test_a_pending_action_fails_when_the_link_drops(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.hang()
    pending = asyncio.create_task(client.send_action(PING, timeout=5.0))
    await asyncio.sleep(0.05)
    server.drop()
    with pytest.raises(AmiConnectionError, match="connection"):
        await pending


# ---- TLS ----


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(  # fixed arguments, no shell
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_link(certificate: tuple[Path, Path], queue: EventQueue) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with FakeAmiServer({"callerid": AmiUser(SECRET)}, ssl=server_side) as tls_server:
        config = ami_config(tls_server.port, tls=True)
        ami = AmiClient(config, queue, ssl_context=trusting)
        assert (await ami.connect()).ami_version == "6.0.0"
        await tls_server.play(CallScenarios().inbound(agents=()).events)
        await barrier(ami)
        assert len(drain(queue)) == 1
        await ami.close()

        untrusting = AmiClient(config, queue)  # the system CAs do not know this certificate
        with pytest.raises(AmiConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.connect()
        await untrusting.close()


# ---- recorded traffic ----


def _count(events: list[dict[str, str]], name: str) -> int:
    return sum(1 for event in events if event["Event"] == name)


@pytest.mark.parametrize("path", ASTERISK_22, ids=lambda p: p.name[:2])
async def test_recorded_asterisk_22_traffic_replays(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue, path: Path
) -> None:
    events = events_only(read_recording(path))
    await server.play(events)
    await barrier(client)
    delivered = drain(queue)
    kinds: Callable[[ChannelEventKind], int] = lambda k: sum(e.kind is k for e in delivered)  # noqa: E731
    assert kinds(ChannelEventKind.NEWCHANNEL) == _count(events, "Newchannel")
    assert kinds(ChannelEventKind.NEWCALLERID) == _count(events, "NewCallerid")
    assert kinds(ChannelEventKind.HANGUP) == _count(events, "Hangup")
    assert client.counters.invalid == client.counters.dropped == 0


async def test_recorded_asterisk_13_traffic_replays(
    server: FakeAmiServer, client: AmiClient, queue: EventQueue
) -> None:
    folder = RECORDINGS / "cacofonisk-ast13"
    for path in sorted(folder.glob("*.txt")):
        expected = json.loads(path.with_suffix(".expect.json").read_text())["newchannel_count"]
        await server.play(events_only(read_recording(path)))
        await barrier(client)
        delivered = drain(queue)
        assert sum(e.kind is ChannelEventKind.NEWCHANNEL for e in delivered) == expected, path.name
        assert all(e.linkedid for e in delivered)
