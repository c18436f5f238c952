"""``MIXMONITOR_FILENAME``: an AMI user with ``read = dialplan`` is told the file MixMonitor
writes, in a ``VarSet``. The daemon asks Asterisk for that variable only (a dialplan sets
dozens per call), reads it into a typed ``RECORDING_FILE`` event, and the call's journal
record carries it with the Uniqueid of the channel that set it first.

Before: VarSet was neither asked for nor read, so the record had no file name."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.supervisor import EVENT_FILTERS
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind, FinishedCall
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import AmiEvent, CallScenarios

from support import make_config, wait_for

FILE = "/var/spool/asterisk/monitor/2026/12/06/in-5551000-18305803077-20261206-101010-{}.wav"
#: manager.conf ``read = call,system,dialplan``.
DIALPLAN_READER = {
    DEMO_USERNAME: AmiUser(DEMO_SECRET, read=frozenset({"call", "system", "dialplan"}))
}


def var_set(channel_event: AmiEvent, variable: str, value: str) -> AmiEvent:
    """A VarSet on the channel of ``channel_event``, as Asterisk 13+ sends it."""
    event = {k: v for k, v in channel_event.items() if k not in ("Event", "Privilege")}
    return {"Event": "VarSet", "Privilege": "dialplan,all", **event} | {
        "Variable": variable,
        "Value": value,
    }


async def read(
    ami: FakeAmiServer, *events: AmiEvent, filtered: bool
) -> tuple[list[ChannelEvent], Any]:
    """What the client delivers with no Filter in place; ``filtered``: as after Asterisk
    accepted the daemon's Filter for the variable (the supervisor tells the client)."""
    queue: asyncio.Queue[ChannelEvent] = asyncio.Queue()
    config = {"port": ami.port, "username": DEMO_USERNAME, "secret": SecretStr(DEMO_SECRET)}
    client = AmiClient(AmiConfig.model_validate(config), queue)
    await client.connect()
    if filtered:
        client.read_recording_files()
    try:
        ignored_before = client.counters.ignored
        await ami.play(events)
        await client.send_action({"Action": "Ping"}, timeout=5.0)
        counters = client.counters
        counters.ignored -= ignored_before
    finally:
        await client.close()
    return [queue.get_nowait() for _ in range(queue.qsize())], counters


def var_sets(root: AmiEvent) -> list[AmiEvent]:
    return [
        var_set(root, "QUEUEPOSITION", "1"),
        var_set(root, "MIXMONITOR_FILENAME", FILE.format(root["Uniqueid"])),
        var_set(root, "MIXMONITOR_FILENAME_X", "/tmp/x.wav"),  # the filter's regex lets it by
        var_set(root, "MIXMONITOR_FILENAME", "/" + "x" * 5000),  # no file name
    ]


async def test_only_mixmonitors_variable_is_read_into_a_typed_event() -> None:
    root = CallScenarios().inbound().events[0]
    async with FakeAmiServer(users=DIALPLAN_READER) as ami:
        delivered, counters = await read(ami, *var_sets(root), filtered=True)
    [event] = delivered
    assert event.kind is ChannelEventKind.RECORDING_FILE
    assert (event.uniqueid, event.linkedid) == (root["Uniqueid"], root["Linkedid"])
    assert event.recording_file == FILE.format(root["Uniqueid"])
    assert (counters.received, counters.invalid, counters.ignored) == (1, 0, 3)


async def test_unfiltered_varsets_are_dropped_unparsed(monkeypatch: Any) -> None:
    """Asterisk refused the Filter (no write = system): every variable the dialplan sets comes
    as a VarSet, and parsing each would cost the hot path; MixMonitor's file is then left to
    ``pattern``."""
    parsed: list[str] = []
    original = AmiClient._on_event
    monkeypatch.setattr(
        AmiClient, "_on_event", lambda self, f: (parsed.append(f["event"]), original(self, f))
    )
    root = CallScenarios().inbound().events[0]
    async with FakeAmiServer(users=DIALPLAN_READER) as ami:
        delivered, counters = await read(ami, *var_sets(root), filtered=False)
    assert delivered == [] and parsed == []
    assert (counters.received, counters.ignored) == (0, 4)


class Collect:
    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call)


async def test_a_calls_record_carries_the_file_mixmonitor_named() -> None:
    """Through the daemon: Asterisk is asked for the variable (Events mask ``dialplan``, a
    Filter on the variable), the dialplan's other VarSets never reach the daemon."""
    call = CallScenarios().inbound(agents=("100", "101"), answered_by="101")
    agent_leg = next(  # the answering agent's Local ;2 runs MixMonitor (FreePBX's queues)
        e for e in call.events if e["Event"] == "Newchannel" and e["Channel"].endswith(";2")
        and e["Channel"].startswith("Local/101")
    )  # fmt: skip
    named = FILE.format(agent_leg["Uniqueid"])
    sink = Collect()
    async with FakeAmiServer(users=DIALPLAN_READER) as ami, FakeKommo() as kommo:
        daemon = Daemon(make_config(ami, kommo), journal_sink=sink)
        serving = asyncio.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.ami_connected or serving.done())
            [session] = ami.sessions
            assert "Variable: MIXMONITOR_FILENAME" in session.filters
            assert session.event_classes == frozenset({"call", "dialplan"})
            await ami.play(call.events)
            assert ami.emit(var_set(agent_leg, "QUEUEPOSITION", "1")) == 0  # filtered out
            assert ami.emit(var_set(agent_leg, "MIXMONITOR_FILENAME", named)) == 1
            await ami.play(call.hangups)
            await wait_for(lambda: len(sink.calls) == 1)
        finally:
            daemon.stop.set()
            assert await serving == EXIT_OK
    [finished] = sink.calls
    assert finished.recording_file == named
    assert finished.uniqueids[:2] == (agent_leg["Uniqueid"], call.linkedid)


def test_the_filter_lets_through_that_variable_only() -> None:
    assert [f for f in EVENT_FILTERS if "VarSet" in f or "Variable" in f] == [
        "Variable: MIXMONITOR_FILENAME"
    ]


async def test_a_server_that_does_not_filter_varsets_stops_their_reading() -> None:
    """It said the Filter was added, yet sends every variable: past a few, the session reads
    no VarSet more (each would be parsed on the hot path to be dropped)."""
    root = CallScenarios().inbound().events[0]
    noise = [var_set(root, f"VAR{n}", "x") for n in range(25)]
    named = var_set(root, "MIXMONITOR_FILENAME", FILE.format(root["Uniqueid"]))
    async with FakeAmiServer(users=DIALPLAN_READER) as ami:
        delivered, counters = await read(ami, named, *noise, named, filtered=True)
    assert [e.kind for e in delivered] == [ChannelEventKind.RECORDING_FILE]  # the first only
    assert (counters.received, counters.ignored) == (1, 26)
