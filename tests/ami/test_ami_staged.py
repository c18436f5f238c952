"""``AmiClient.request_in_stages``: an async Originate answered "queued" at once and by its
OriginateResponse later. The caller gets what came within its budget; the rest goes to a
callback, or nowhere when the link is lost or it never comes. Real sockets, the fake AMI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from kommo_callerid.ami.client import AmiClient, AmiConnectionError
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer

from support import wait_for

CHANNEL = "Local/101@from-internal"
ORIGINATE = {
    "Action": "Originate",
    "Channel": CHANNEL,
    "Context": "from-internal",
    "Exten": "18305803077",
    "Priority": "1",
    "Async": "true",
}


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    users = {DEMO_USERNAME: AmiUser(DEMO_SECRET, write=frozenset({"originate"}))}
    async with FakeAmiServer(users) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeAmiServer) -> AsyncIterator[AmiClient]:
    config = AmiConfig(
        host="127.0.0.1", port=server.port, username=DEMO_USERNAME, secret=SecretStr(DEMO_SECRET)
    )
    ami = AmiClient(config, asyncio.Queue[ChannelEvent]())
    await ami.connect()
    yield ami
    await ami.close()


def pending(client: AmiClient) -> int:
    """Actions still waiting for an answer in the session (a test looks inside)."""
    link = client._link
    assert link is not None
    return len(link.protocol.responses)


async def test_the_whole_answer_when_it_comes_within_the_budget(
    server: FakeAmiServer, client: AmiClient
) -> None:
    later: list[object] = []
    answer = await client.request_in_stages(ORIGINATE, 2.0, 30.0, later.append)
    assert [m.get("Event", m.get("Response")) for m in answer] == ["Success", "OriginateResponse"]
    assert later == [] and pending(client) == 0


async def test_the_first_response_then_the_rest_through_the_callback(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.originate_delay = 0.5
    server.originate_failures[CHANNEL] = "3"
    later: list[list[dict[str, str]]] = []
    [queued] = await client.request_in_stages(ORIGINATE, 0.1, 30.0, later.append)
    assert queued["Response"] == "Success" and "queued" in queued["Message"]
    assert server.ringing == 1 and later == []
    await wait_for(lambda: bool(later))
    [[_, event]] = later
    assert event["Event"] == "OriginateResponse" and event["Reason"] == "3"
    assert pending(client) == 0


async def test_a_refusal_is_the_whole_answer_at_once(client: AmiClient) -> None:
    refused = {**ORIGINATE, "Channel": ""}
    [answer] = await client.request_in_stages(refused, 2.0, 30.0, lambda _: None)
    assert answer["Response"] == "Error"


async def test_the_rest_is_given_up_after_its_timeout(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.originate_delay = 3.0
    later: list[object] = []
    await client.request_in_stages(ORIGINATE, 0.1, 0.3, later.append)
    assert pending(client) == 1
    await wait_for(lambda: pending(client) == 0)  # forgotten: nothing held for ever
    await asyncio.sleep(0.1)
    assert later == []


async def test_a_lost_link_drops_the_rest_quietly(server: FakeAmiServer, client: AmiClient) -> None:
    server.originate_delay = 3.0
    later: list[object] = []
    await client.request_in_stages(ORIGINATE, 0.1, 30.0, later.append)
    server.drop()
    await wait_for(lambda: not client.connected)
    assert later == []


async def test_no_answer_at_all_is_a_timeout_and_nothing_stays(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.unanswered.add("originate")
    with pytest.raises(TimeoutError):
        await client.request_in_stages(ORIGINATE, 0.2, 30.0, lambda _: None)
    assert pending(client) == 0


async def test_a_lost_link_before_the_answer_is_a_connection_error(
    server: FakeAmiServer, client: AmiClient
) -> None:
    server.hang()
    asking = asyncio.create_task(client.request_in_stages(ORIGINATE, 5.0, 30.0, lambda _: None))
    await asyncio.sleep(0.1)
    server.drop()
    with pytest.raises(AmiConnectionError):
        await asking
    server.unhang()
