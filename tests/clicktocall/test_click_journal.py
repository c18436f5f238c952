"""A click-to-call call is journaled as the clicking user's outbound call.

Before: an originated call's root is a Local channel whose exten is the user's extension, so
the journal saw an internal call and recorded nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from click_setup import ORIGINATOR, click_config, client_tls, post_click, self_signed
from click_tokens import USER, token
from structlog.testing import capture_logs

from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.calls.outcome_verdict import Click
from kommo_callerid.core.models import (
    CallDirection,
    CallStatus,
    ChannelEvent,
    ChannelEventKind,
    FinishedCall,
)
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

from support import events, running_daemon, wait_for


async def _click_and_play(tmp_path: Path, **call: Any) -> tuple[FakeKommo, list[Any]]:
    cert, key = self_signed(tmp_path)
    async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo() as kommo:
        # The user's extension is not in [notify.extensions]: the token's user is responsible.
        config = click_config(
            ami,
            kommo,
            cert,
            key,
            notify={"extensions": {}},
            clicktocall={"users": {str(USER): "101"}},
            journal={"database": str(tmp_path / "journal.sqlite3")},
        )
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                await wait_for(lambda: bool(events(logs, "clicktocall.account")))
                connector = aiohttp.TCPConnector(ssl=client_tls(cert))
                async with aiohttp.ClientSession(connector=connector) as session:
                    url = f"https://127.0.0.1:{daemon.public_port}"
                    assert (await post_click(session, url, token()))[0] == 202
                [(_, action)] = ami.originates
                scenario = CallScenarios().click(action["channelid"], "101", "18305803077", **call)
                await ami.play(scenario.events)
                await ami.play(scenario.hangups)
                await wait_for(lambda: bool(events(logs, "journal.recorded")), 5.0)
                await wait_for(lambda: len(kommo.journal.calls) >= 1, 5.0)
        return kommo, list(logs)


async def test_an_answered_click_is_the_users_outbound_call(tmp_path: Path) -> None:
    kommo, _ = await _click_and_play(tmp_path)
    [accepted] = kommo.journal.calls
    body = accepted.body
    assert body["direction"] == "outbound"
    assert body["phone"] == "18305803077"
    assert body["call_status"] == 4
    assert body["responsible_user_id"] == USER
    assert accepted.uniq.startswith("kommo-click-")


async def test_a_click_the_customer_did_not_answer_is_journaled_as_such(tmp_path: Path) -> None:
    kommo, _ = await _click_and_play(tmp_path, customer="BUSY")
    [accepted] = kommo.journal.calls
    assert accepted.body["direction"] == "outbound"
    assert accepted.body["call_status"] == 7
    assert accepted.body["responsible_user_id"] == USER


def _feed(tracker: OutcomeTracker, call: SyntheticCall) -> list[FinishedCall]:
    finished: list[FinishedCall] = []
    for at, fields in enumerate(call.all_events):
        finished += tracker.feed(_event(fields, float(at)))
    return finished


def _event(fields: dict[str, str], at: float) -> ChannelEvent:
    kind = ChannelEventKind(fields["Event"])
    return ChannelEvent(
        kind=kind,
        channel=fields.get("Channel", ""),
        uniqueid=fields.get("Uniqueid", ""),
        linkedid=fields.get("Linkedid", ""),
        caller_num=fields.get("CallerIDNum", ""),
        caller_name=fields.get("CallerIDName", ""),
        context=fields.get("Context", ""),
        exten=fields.get("Exten", ""),
        received_at=at,
        dest_channel=fields.get("DestChannel", ""),
        dest_uniqueid=fields.get("DestUniqueid", ""),
        dial_status=fields.get("DialStatus", ""),
        cause=int(fields.get("Cause", "0")),
        bridge_id=fields.get("BridgeUniqueid", ""),
    )


def test_the_tracker_knows_a_click_only_by_its_mark() -> None:
    """Before the mark: 0 records for an originated call; with it: the user's outbound call."""
    call = CallScenarios().click("kommo-click-1", "101", "18305803077")
    unmarked = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    assert _feed(unmarked, call) == []
    marked = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    marked.expect_click("kommo-click-1", Click(USER, "101", "18305803077", until=100.0))
    [finished] = _feed(marked, call)
    assert finished.direction is CallDirection.OUTBOUND
    assert (finished.user_id, finished.extension, finished.phone) == (USER, "101", "18305803077")
    assert finished.status is CallStatus.ANSWERED


def test_a_click_the_user_never_answered_is_not_journaled() -> None:
    call = CallScenarios().click("kommo-click-2", "101", "18305803077", agent_answers=False)
    tracker = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    tracker.expect_click("kommo-click-2", Click(USER, "101", "18305803077", until=100.0))
    assert _feed(tracker, call) == []  # the customer's phone never rang
    assert tracker.table_sizes()["clicks"] == 0
