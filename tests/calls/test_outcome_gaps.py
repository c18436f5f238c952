"""Calls across a lost AMI link (issue 18, point 7), pure: the tracker keeps what it knew,
the next session's channel list says what is left, and calls go on to their journal record.
Also the age limits: an answered call is kept for a day."""

from __future__ import annotations

from outcome_shapes import FakePbx
from test_outcome import answer_via_local, assert_no_state, only

from kommo_callerid.calls.detector import CallTracker
from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.core.models import CallStatus, ChannelEvent, ChannelEventKind

HOUR = 3600.0


def test_a_call_in_progress_when_the_link_drops_is_journaled_when_it_ends() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    legs = answer_via_local(pbx.at(5), call, "100", "b")
    pbx.at(20).link_lost()
    pbx.at(21).listed((call, "b"), (legs[0], "b"), (legs[1], "b-inner"), (legs[2], "b-inner"))
    pbx.at(65).hangup(*legs, call)
    record = only(pbx)  # before: dropped as link_lost at the gap, no record
    assert (record.status, record.answered_by, record.duration) == (CallStatus.ANSWERED, "100", 60)
    assert record.started_at == 1_000.0
    assert pbx.tracker.stats.dropped_link_lost == 0
    assert_no_state(pbx.tracker)


def test_hangups_after_the_gap_end_a_call_before_the_list_comes() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    legs = answer_via_local(pbx.at(5), call, "100", "b")
    pbx.at(20).link_lost()
    pbx.at(30).hangup(*legs, call)  # the new session's events come before its list
    pbx.at(31).listed()
    assert (only(pbx).duration, pbx.tracker.stats.dropped_link_lost) == (25, 0)
    assert_no_state(pbx.tracker)


def test_what_is_not_listed_went_in_the_gap() -> None:
    pbx = FakePbx()
    kept, ended = pbx.inbound(), pbx.inbound()
    pbx.device("100", kept)
    pbx.at(10).link_lost()
    pbx.at(12).listed((kept, ""))  # the phone stopped ringing and the other call ended
    assert (len(pbx.tracker), pbx.tracker.stats.dropped_link_lost) == (1, 1)
    pbx.at(40).hangup(kept)
    record = only(pbx)
    assert (record.call_id, record.status) == (kept, CallStatus.NO_ANSWER)
    assert ended not in {r.call_id for r in pbx.finished}
    assert_no_state(pbx.tracker)


def test_a_channel_born_after_the_gap_is_trusted_though_the_list_missed_it() -> None:
    pbx = FakePbx()
    pbx.link_lost()
    call = pbx.at(5).inbound()  # seen in the new session, listed too late
    pbx.at(6).listed()
    pbx.at(9).hangup(call)
    assert only(pbx).call_id == call


def test_a_call_that_started_in_the_gap_is_taken_up_with_the_pbx_durations() -> None:
    pbx = FakePbx()
    pbx.link_lost()
    pbx.muted = True  # the daemon sees nothing of this call's start
    call = pbx.at(10).inbound()
    legs = answer_via_local(pbx.at(20), call, "100", "b")
    pbx.muted = False
    pbx.at(50).listed((call, "b"), (legs[0], "b"), (legs[1], "b-inner"), (legs[2], "b-inner"))
    assert pbx.tracker.stats.resumed == 1
    pbx.at(80).hangup(*legs, call)
    record = only(pbx)
    assert (record.status, record.answered_by) == (CallStatus.ANSWERED, "100")
    assert (record.started_at, record.duration) == (1_010.0, 60)  # the PBX's Durations
    assert_no_state(pbx.tracker)


def test_an_answer_in_the_gap_is_never_dated_before_the_gap() -> None:
    pbx = FakePbx()
    call = pbx.inbound()
    phone = pbx.at(5).device("100", call)  # rings before the gap
    pbx.at(8).caller_id(call, "18305803077")  # the last event before it
    pbx.at(10).link_lost()
    pbx.muted = True
    pbx.at(30).dial_end(call, phone, "ANSWER")
    pbx.bridge("b", call, phone)
    pbx.muted = False
    pbx.at(40).listed((call, "b"), (phone, "b"))
    pbx.at(100).hangup(phone, call)
    record = only(pbx)
    assert (record.answered_by, record.duration) == ("100", 92)  # from the gap's start, not 95


def test_no_list_after_a_gap_forgets_the_calls_from_before_it_only() -> None:
    pbx = FakePbx()
    old = pbx.inbound()
    pbx.at(10).link_lost()
    new = pbx.at(12).inbound()
    pbx.feed(ChannelEvent.marker(ChannelEventKind.CHANNELS_UNKNOWN, pbx.now))
    assert pbx.tracker.stats.dropped_link_lost == 1
    pbx.at(20).hangup(old, new)
    assert only(pbx).call_id == new
    assert_no_state(pbx.tracker)


def test_listed_channels_are_never_notified() -> None:
    pbx = FakePbx()
    pbx.muted = True
    call = pbx.inbound()
    pbx.muted = False
    seen: list[ChannelEvent] = []
    pbx.feed = seen.append  # type: ignore[method-assign]
    pbx.at(30).listed((call, ""))
    detector = CallTracker(["from-trunk"], 7)
    assert [e.kind for e in seen] == [ChannelEventKind.CHANNEL_UP, ChannelEventKind.CHANNELS_LISTED]
    assert all(detector.feed(event) == [] for event in seen)
    assert len(detector) == 0


def test_an_answered_call_of_five_hours_is_journaled() -> None:
    tracker = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    pbx = FakePbx(tracker)
    call = pbx.inbound()
    legs = answer_via_local(pbx, call, "100", "b")
    ringing = pbx.inbound()  # nobody ever answers, no Hangup ever comes
    for hour in range(1, 6):  # the daemon's housekeeping, with the clock moved
        assert tracker.expire(pbx.at(hour * HOUR).now) == (1 if hour == 4 else 0)
    pbx.at(5 * HOUR).hangup(*legs, call)
    record = only(pbx)  # before: dropped as stale at 4 h
    assert (record.status, record.duration) == (CallStatus.ANSWERED, 5 * 3600)
    assert ringing not in {r.call_id for r in pbx.finished}
    assert tracker.stats.dropped_stale == 1


def test_an_answered_call_without_a_hangup_goes_after_a_day() -> None:
    tracker = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    pbx = FakePbx(tracker)
    answer_via_local(pbx, pbx.inbound(), "100", "b")
    assert tracker.expire(pbx.at(24 * HOUR - 1).now) == 0
    assert tracker.expire(pbx.at(24 * HOUR).now) == 1
    assert len(tracker) == 0
