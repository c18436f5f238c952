"""Call outcome tracking: synthetic call shapes with a manual clock, pure (no I/O)."""

from __future__ import annotations

import pytest
from outcome_shapes import CALLER, DID, FakePbx

from kommo_callerid.calls.detector import CallTracker
from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.core.models import (
    CallDirection,
    CallStatus,
    ChannelEvent,
    ChannelEventKind,
    FinishedCall,
)


def only(pbx: FakePbx) -> FinishedCall:
    assert len(pbx.finished) == 1, pbx.finished
    return pbx.finished[0]


def assert_no_state(tracker: OutcomeTracker) -> None:
    assert tracker.table_sizes() == dict.fromkeys(tracker.table_sizes(), 0)


def answer_via_local(pbx: FakePbx, call: str, extension: str, bridge: str) -> list[str]:
    """The trunk dials ``Local/EXT@agents``; its ``;2`` dials the phone, which answers."""
    half1, half2 = pbx.local(extension, call)
    phone = pbx.device(extension, call)
    pbx.dial_end(half2, phone, "ANSWER")
    pbx.bridge(f"{bridge}-inner", phone, half2)
    pbx.dial_end(call, half1, "ANSWER")
    pbx.bridge(bridge, half1, call)
    return [half1, half2, phone]


def test_queue_of_three_agents_where_the_second_answers() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    legs = [pbx.local(ext, call) for ext in ("100", "101", "102")]
    phones = [pbx.device(ext, call) for ext in ("100", "101", "102")]
    pbx.at(12)
    for (_, half2), phone in zip(legs, phones, strict=True):
        pbx.dial_end(half2, phone, "ANSWER" if phone == phones[1] else "CANCEL")
    pbx.bridge("inner", phones[1], legs[1][1])
    for (half1, _), ext in zip(legs, ("100", "101", "102"), strict=True):
        pbx.dial_end(call, half1, "ANSWER" if ext == "101" else "CANCEL")
    pbx.bridge("outer", legs[1][0], call)
    pbx.hangup(phones[0], phones[2], *legs[0], *legs[2])
    assert pbx.finished == []
    pbx.at(72).hangup(phones[1], *legs[1], call)
    record = only(pbx)
    assert (record.direction, record.status) == (CallDirection.INBOUND, CallStatus.ANSWERED)
    assert (record.answered_by, record.duration, record.phone) == ("101", 60, CALLER)
    assert (record.did, record.extension, record.call_id) == (DID, None, call)
    assert record.result == "answered by 101"
    assert record.started_at == 1_000.0
    assert_no_state(pbx.tracker)


def test_ring_group_where_everyone_is_busy() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    phones = [pbx.device(ext, call) for ext in ("100", "101")]
    for phone in phones:
        pbx.dial_end(call, phone, "BUSY")
    pbx.hangup(*phones, cause=17)
    pbx.at(2).hangup(call, cause=17)
    record = only(pbx)
    assert (record.status, record.duration, record.answered_by) == (CallStatus.BUSY, 0, None)
    assert record.result == "busy: 100, 101"


def test_caller_abandons_in_queue_after_20_s() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    pbx.at(5)
    half1, half2 = pbx.local("100", call)
    phone = pbx.device("100", call)
    pbx.at(20)
    pbx.dial_end(half2, phone, "CANCEL")
    pbx.dial_end(call, half1, "CANCEL")
    pbx.hangup(phone, half2, half1, call)
    record = only(pbx)
    assert (record.status, record.duration) == (CallStatus.NO_ANSWER, 0)
    assert record.result == "caller hung up after 20 s while 100 rang"


def test_blind_transfer_names_the_second_party() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    first = pbx.device("101", call)
    pbx.at(5).dial_end(call, first, "ANSWER")
    pbx.bridge("b1", first, call)
    pbx.at(30).leave("b1", first, call)
    pbx.hangup(first)
    second = pbx.device("102", call)
    pbx.at(35).dial_end(call, second, "ANSWER")
    pbx.bridge("b2", second, call)
    pbx.at(95).hangup(second, call)
    record = only(pbx)
    assert (record.answered_by, record.duration) == ("101", 90)
    assert record.result == "answered by 101; transferred to 102"


def test_attended_transfer_across_linkedids_is_one_record() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    agent = pbx.device("101", call)
    pbx.at(5).dial_end(call, agent, "ANSWER")
    pbx.bridge("b1", agent, call)
    # 101 puts the caller on hold and calls 102: a call of its own (internal, no record).
    consult = pbx.at(20).channel("PJSIP/101-0000ff01", context="from-internal", exten="102")
    target = pbx.device("102", consult)
    pbx.dial_end(consult, target, "ANSWER")
    pbx.bridge("b2", target, consult)
    pbx.at(40).leave("b2", consult, target)
    pbx.leave("b1", agent)
    pbx.bridge("b1", target)  # 102 joins the caller
    pbx.hangup(agent, consult)
    pbx.at(100).hangup(target, call)
    record = only(pbx)
    assert (record.answered_by, record.duration) == ("101", 95)
    assert record.result == "answered by 101; transferred to 102"
    assert_no_state(pbx.tracker)


def test_one_extension_with_two_devices_is_one_record() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    half1, half2 = pbx.local("100", call)
    desk, mobile_app = pbx.device("100", call), pbx.device("100", call)
    pbx.at(8).dial_end(half2, mobile_app, "ANSWER")
    pbx.dial_end(half2, desk, "CANCEL")
    pbx.hangup(desk, cause=26)
    pbx.bridge("inner", mobile_app, half2)
    pbx.dial_end(call, half1, "ANSWER")
    pbx.bridge("outer", half1, call)
    pbx.at(20).hangup(mobile_app, half2, half1, call)
    record = only(pbx)
    assert (record.answered_by, record.duration, record.status) == ("100", 12, CallStatus.ANSWERED)


def outbound(pbx: FakePbx, status: str, talk: float = 0.0) -> FinishedCall:
    phone = pbx.channel("PJSIP/100-00000031", context="from-internal", exten="8 830 580-3077")
    trunk = pbx.channel("PJSIP/carrier-00000032", phone)
    pbx.at(8).dial_end(phone, trunk, status)
    if status == "ANSWER":
        pbx.bridge("out", phone, trunk)
    pbx.at(8 + talk).hangup(trunk, phone)
    return only(pbx)


@pytest.mark.parametrize(
    ("status", "expected", "result"),
    [
        ("ANSWER", CallStatus.ANSWERED, "answered, 30 s"),
        ("BUSY", CallStatus.BUSY, "busy"),
        ("CONGESTION", CallStatus.INVALID_NUMBER, "number unreachable (congestion)"),
        ("CHANUNAVAIL", CallStatus.INVALID_NUMBER, "number unreachable (chanunavail)"),
        ("NOANSWER", CallStatus.NO_ANSWER, "no answer after 8 s"),
    ],
)
def test_outbound_calls(status: str, expected: CallStatus, result: str) -> None:
    record = outbound(FakePbx(), status, talk=30.0 if status == "ANSWER" else 0.0)
    assert (record.direction, record.status, record.result) == (
        CallDirection.OUTBOUND,
        expected,
        result,
    )
    assert (record.phone, record.extension, record.did) == ("88305803077", "100", None)
    assert record.duration == (30 if status == "ANSWER" else 0)
    assert record.answered_by is None


def test_outbound_to_an_unallocated_number_by_hangup_cause() -> None:
    pbx = FakePbx()
    phone = pbx.channel("PJSIP/100-00000031", context="from-internal", exten="88305803077")
    pbx.hangup(phone, cause=1)
    assert only(pbx).status is CallStatus.INVALID_NUMBER


def test_internal_call_leaves_no_record() -> None:
    pbx = FakePbx()
    phone = pbx.channel("PJSIP/100-00000031", context="from-internal", exten="101")
    other = pbx.device("101", phone)
    pbx.dial_end(phone, other, "ANSWER")
    pbx.bridge("b", phone, other)
    pbx.at(10).hangup(other, phone)
    assert pbx.finished == []
    assert (pbx.tracker.stats.finished, pbx.tracker.stats.not_journaled) == (1, 1)
    assert_no_state(pbx.tracker)


@pytest.mark.parametrize("caller", ["anonymous", "<unknown>", "", "Restricted"])
def test_withheld_caller_leaves_no_record(caller: str) -> None:
    pbx = FakePbx()
    call = pbx.inbound(caller=caller)
    legs = answer_via_local(pbx, call, "100", "b")
    pbx.at(10).hangup(*legs, call)
    assert pbx.finished == []
    assert_no_state(pbx.tracker)


def test_a_local_root_learns_its_caller_late() -> None:
    pbx = FakePbx()
    root = pbx.channel("Local/5551000@from-trunk-00000006;1", context="from-trunk", exten=DID)
    half2 = pbx.channel("Local/5551000@from-trunk-00000006;2", root)
    pbx.caller_id(root, CALLER)
    agent1, agent2 = pbx.local("100", root)
    pbx.dial_end(half2, agent1, "ANSWER")
    pbx.bridge("b", agent1, half2)
    pbx.at(22).hangup(agent2, agent1, half2, root)
    record = only(pbx)
    assert (record.phone, record.answered_by, record.duration) == (CALLER, "100", 22)


def test_pbx_name_and_wall_clock_make_the_call_id_and_start() -> None:
    tracker = OutcomeTracker(["from-trunk"], [], 7, pbx="north", wall_offset=1.7e9)
    pbx = FakePbx(tracker)
    call = pbx.inbound()
    pbx.at(3).hangup(call)
    record = only(pbx)
    assert (record.call_id, record.pbx, record.linkedid) == (f"north/{call}", "north", call)
    assert record.started_at == 1.7e9 + 1_000.0


def test_a_lost_link_with_no_channel_list_forgets_every_call_and_counts_them() -> None:
    pbx = FakePbx()
    calls = [pbx.inbound() for _ in range(3)]
    answer_via_local(pbx, calls[0], "100", "b")
    pbx.feed(ChannelEvent.link_lost(pbx.now))
    assert pbx.tracker.stats.dropped_link_lost == 0  # kept until the next session says
    pbx.feed(ChannelEvent.marker(ChannelEventKind.CHANNELS_UNKNOWN, pbx.now))
    assert pbx.tracker.stats.dropped_link_lost == 3
    assert_no_state(pbx.tracker)
    pbx.hangup(calls[0])  # a Hangup after the gap changes nothing
    assert pbx.finished == []


def test_stale_and_overflowing_calls_are_dropped_and_counted() -> None:
    tracker = OutcomeTracker(["from-trunk"], [], 7, max_calls=2, max_age=100.0)
    pbx = FakePbx(tracker)
    for _ in range(3):
        pbx.inbound()
    assert (len(tracker), tracker.stats.dropped_overflow) == (2, 1)
    assert tracker.expire(pbx.now + 99) == 0
    assert tracker.expire(pbx.now + 100) == 2
    assert tracker.stats.dropped_stale == 2
    assert len(tracker) == 0


def test_a_flood_pushes_out_unanswered_calls_before_a_conversation() -> None:
    """Over the cap the oldest call nobody answered goes first: the conversation that was
    going on before a flood of never-ending calls still gets its record."""
    tracker = OutcomeTracker(["from-trunk"], [], 7, max_calls=3, max_age=3600.0)
    pbx = FakePbx(tracker)
    talking = pbx.inbound()
    legs = answer_via_local(pbx, talking, "100", "b")
    for _ in range(10):
        pbx.inbound()  # ringing forever
    assert (len(tracker), tracker.stats.dropped_overflow) == (3, 8)
    pbx.hangup(*legs, talking)
    assert only(pbx).answered_by == "100"


def test_ten_thousand_calls_leave_no_state_behind() -> None:
    pbx = FakePbx()
    for n in range(10_000):
        call = pbx.at(n).inbound()
        legs = answer_via_local(pbx, call, str(100 + n % 50), f"b{n}")
        pbx.at(n + 0.5).hangup(*legs, call)
    assert len(pbx.finished) == 10_000
    assert {r.answered_by for r in pbx.finished} == {str(100 + n) for n in range(50)}
    assert pbx.tracker.stats.recorded == 10_000
    assert_no_state(pbx.tracker)


def test_the_detector_ignores_the_outcome_events() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    agent = pbx.device("101", call)
    captured: list[ChannelEvent] = []
    pbx.feed = captured.append  # type: ignore[method-assign]
    pbx.dial_end(call, agent, "ANSWER")
    pbx.bridge("b", agent, call)
    pbx.leave("b", agent)
    detector = CallTracker(["from-trunk"], 7)
    assert len(captured) == 4
    assert all(detector.feed(event) == [] for event in captured)


def test_reconfigured_rules_apply_to_the_next_calls() -> None:
    pbx = FakePbx()
    before = pbx.channel("PJSIP/carrier-1", context="from-pstn-eu", exten=DID, num=CALLER)
    pbx.tracker.reconfigure(["from-pstn-*"], ["from-internal"], 7)
    after = pbx.channel("PJSIP/carrier-2", context="from-pstn-eu", exten=DID, num=CALLER)
    pbx.at(5).hangup(before, after)
    assert (only(pbx).call_id, only(pbx).direction) == (after, CallDirection.INBOUND)


def test_channel_maps_stay_capped_when_hangups_never_come() -> None:
    tracker = OutcomeTracker(["from-trunk"], [], 7, max_channels=10)
    pbx = FakePbx(tracker)
    for n in range(50):  # calls in a context nobody tracks: only the shared maps fill up
        root = pbx.channel(f"SIP/other-{n}", context="elsewhere", exten="1")
        half1, _ = pbx.local(str(n), root)
        pbx.dial_end(root, half1, "ANSWER")
        pbx.bridge(f"b{n}", half1, root)
    assert len(tracker) == 0
    assert all(size <= 10 for size in tracker.table_sizes().values()), tracker.table_sizes()
