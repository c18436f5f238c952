"""The AMI client's reading of the events the call outcome tracker uses: DialEnd (both ends,
DialStatus), BridgeEnter/BridgeLeave (bridge id), Hangup (Cause)."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.supervisor import EVENT_FILTERS
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer

DIAL_END = {
    "Event": "DialEnd",
    "Privilege": "call,all",
    "Channel": "IAX2/carrier-13803",
    "Uniqueid": "1795552671.12",
    "Linkedid": "1795552671.12",
    "DestChannel": "Local/100@agents-00000004;1",
    "DestUniqueid": "1795552673.13",
    "DestLinkedid": "1795552671.12",
    "DialStatus": "ANSWER",
}
ORIGINATED_DIAL_END = {  # an Originate's Dial has no dialling channel
    "Event": "DialEnd",
    "Privilege": "call,all",
    "DestChannel": "IAX2/trunk-out-603",
    "DestUniqueid": "1795552788.35",
    "DestLinkedid": "1795552788.35",
    "DialStatus": "ANSWER",
}
BRIDGE_ENTER = {
    "Event": "BridgeEnter",
    "Privilege": "call,all",
    "BridgeUniqueid": "c5ba7bda-feb9-4e92-9a31-e3344b90581b",
    "Channel": "IAX2/carrier-13803",
    "Uniqueid": "1795552671.12",
    "Linkedid": "1795552671.12",
}
HANGUP = {
    "Event": "Hangup",
    "Privilege": "call,all",
    "Channel": "IAX2/carrier-6094",
    "Uniqueid": "1795552755.28",
    "Linkedid": "1795552755.28",
    "Cause": "17",
    "Cause-txt": "User busy",
}


async def read_events(ami: FakeAmiServer, *events: dict[str, str]) -> list[ChannelEvent]:
    queue: asyncio.Queue[ChannelEvent] = asyncio.Queue()
    config = {"port": ami.port, "username": DEMO_USERNAME, "secret": SecretStr(DEMO_SECRET)}
    client = AmiClient(AmiConfig.model_validate(config), queue)
    await client.connect()
    try:
        await ami.play(events)
        await client.send_action({"Action": "Ping"}, timeout=5.0)
        assert client.counters.invalid == 0
    finally:
        await client.close()
    return [queue.get_nowait() for _ in range(queue.qsize())]


async def test_outcome_fields_are_read(ami: FakeAmiServer) -> None:
    dial, originated, enter, hangup = await read_events(
        ami, DIAL_END, ORIGINATED_DIAL_END, BRIDGE_ENTER, HANGUP
    )
    assert (dial.kind, dial.uniqueid, dial.linkedid) == (
        ChannelEventKind.DIAL_END,
        "1795552671.12",
        "1795552671.12",
    )
    assert (dial.dest_channel, dial.dest_uniqueid, dial.dial_status) == (
        "Local/100@agents-00000004;1",
        "1795552673.13",
        "ANSWER",
    )
    assert (originated.uniqueid, originated.linkedid) == ("", "1795552788.35")
    assert (enter.kind, enter.bridge_id) == (
        ChannelEventKind.BRIDGE_ENTER,
        "c5ba7bda-feb9-4e92-9a31-e3344b90581b",
    )
    assert (hangup.kind, hangup.cause) == (ChannelEventKind.HANGUP, 17)


async def test_a_newchannel_keeps_the_outcome_fields_empty(ami: FakeAmiServer) -> None:
    newchannel = {k: v for k, v in HANGUP.items() if not k.startswith("Cause")}
    newchannel["Event"] = "Newchannel"
    (event,) = await read_events(ami, newchannel)
    assert (event.bridge_id, event.dest_uniqueid, event.dial_status, event.cause) == ("", "", "", 0)


def test_asterisk_is_asked_for_the_outcome_events() -> None:
    for name in ("DialEnd", "BridgeEnter", "BridgeLeave", "Hangup"):
        assert f"Event: {name}" in EVENT_FILTERS
