"""Call outcomes of every recording, replayed through the fake AMI server and the real client.

The expected records sit beside each recording as ``<name>.journal.json`` (format in
``tests/data/ami-recordings/README.md``). The recordings carry no timestamps and replay in far
less than a second, so every duration is 0 (compared within 1 s).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent, FinishedCall
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.recording import events_only, read_recording

from support import RECORDINGS

#: AMI 1.x (Asterisk 11 and older) has no DialEnd/Bridge events: no outcomes are claimed there.
NO_OUTCOMES = frozenset({"asterisk-1x", "cacofonisk-ami1"})
RECORDED = sorted(
    p
    for p in RECORDINGS.glob("*/*.txt")
    if not p.name.endswith(".actions.txt") and p.parent.name not in NO_OUTCOMES
)
#: The contexts of each recording set's PBX (the cacofonisk one is VoIPGRID's).
CONTEXTS = {
    "asterisk-22": (
        ["from-trunk", "from-pstn", "from-external", "from-did-direct"],
        ["from-internal"],
    ),
    "cacofonisk-ast13": (["voipgrid_in"], ["osvpi_account"]),
}


def expected_records(recording: Path) -> list[dict[str, Any]]:
    path = recording.with_name(recording.name.removesuffix(".txt") + ".journal.json")
    records: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return records


def as_record(call: FinishedCall) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "direction": call.direction.value,
        "status": int(call.status),
        "duration": call.duration,
        "answered_by": call.answered_by,
        "phone": call.phone,
    }


async def replay(server: FakeAmiServer, recording: Path) -> list[ChannelEvent]:
    queue: asyncio.Queue[ChannelEvent] = asyncio.Queue()
    config = AmiConfig.model_validate(
        {"port": server.port, "username": DEMO_USERNAME, "secret": SecretStr(DEMO_SECRET)}
    )
    client = AmiClient(config, queue)
    await client.connect()
    try:
        await server.play(events_only(read_recording(recording)))
        await client.send_action({"Action": "Ping"}, timeout=5.0)  # everything before is read
        assert client.counters.invalid == client.counters.dropped == 0
    finally:
        await client.close()
    return [queue.get_nowait() for _ in range(queue.qsize())]


@pytest.mark.parametrize("recording", RECORDED, ids=lambda p: f"{p.parent.name[:4]}/{p.stem}")
async def test_recording_gives_the_expected_journal_records(
    ami: FakeAmiServer, recording: Path
) -> None:
    inbound, outbound = CONTEXTS[recording.parent.name]
    tracker = OutcomeTracker(inbound, outbound, 7)
    finished = [call for event in await replay(ami, recording) for call in tracker.feed(event)]
    got = [as_record(call) for call in finished]
    expected = expected_records(recording)
    assert [r["duration"] for r in got] == pytest.approx([r["duration"] for r in expected], abs=1)
    strip = [{**r, "duration": 0} for r in got]
    assert strip == [{**r, "duration": 0} for r in expected]
    assert tracker.table_sizes() == dict.fromkeys(tracker.table_sizes(), 0)
