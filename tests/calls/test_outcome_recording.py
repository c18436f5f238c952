"""What the outcome tracker hands the recordings: every Uniqueid of the call (the file is
named by the channel that ran MixMonitor: an agent's leg of a queue call, the caller's for an
outbound one), most likely first and bounded, and the file MixMonitor named
(``MIXMONITOR_FILENAME``) when Asterisk said.

Before: a finished call carried only its Linkedid, so a file named by an agent's leg was
never found."""

from __future__ import annotations

from dataclasses import replace

from outcome_shapes import FakePbx, K

from kommo_callerid.core.models import MAX_CALL_UNIQUEIDS, FinishedCall

FILE = "/var/spool/asterisk/monitor/2026/12/06/in-5551000-18305803077-20261206-101010-x.wav"


def queue_call(pbx: FakePbx, agents: int, answering: int) -> tuple[str, list[str]]:
    """An inbound call ringing ``agents`` agents through Local pairs; the ``answering``-th
    answers. (the call, the answering agent's [;1, ;2, phone])."""
    call = pbx.inbound()
    legs = [(*pbx.local(f"{100 + n}", call), pbx.device(f"{100 + n}", call)) for n in range(agents)]
    half1, half2, phone = legs[answering]
    pbx.at(10)
    pbx.dial_end(half2, phone, "ANSWER")
    pbx.bridge("inner", phone, half2)
    pbx.dial_end(call, half1, "ANSWER")
    pbx.bridge("outer", half1, call)
    for n, leg in enumerate(legs):
        if n != answering:
            pbx.hangup(*leg)
    return call, [half1, half2, phone]


def recording_file(pbx: FakePbx, uniqueid: str, path: str) -> None:
    pbx.feed(replace(pbx._event(K.RECORDING_FILE, uniqueid), recording_file=path))


def finished(pbx: FakePbx) -> FinishedCall:
    [record] = pbx.finished
    return record


def test_a_queue_call_carries_every_uniqueid_the_root_and_bridged_legs_first() -> None:
    pbx = FakePbx()
    call, (half1, half2, phone) = queue_call(pbx, agents=3, answering=1)
    pbx.at(70).hangup(phone, half2, half1, call)
    record = finished(pbx)
    assert record.uniqueids[:4] == (call, phone, half2, half1)
    assert len(record.uniqueids) == 1 + 3 * 3  # the root and three channels per agent
    assert len(set(record.uniqueids)) == len(record.uniqueids)
    assert record.recording_file == ""


def test_a_big_queues_uniqueids_are_bounded_and_keep_the_answering_agents_legs() -> None:
    pbx = FakePbx()
    call, legs = queue_call(pbx, agents=30, answering=29)  # the last agent: born last
    pbx.at(70).hangup(*legs, call)
    record = finished(pbx)
    assert len(record.uniqueids) == MAX_CALL_UNIQUEIDS
    assert record.uniqueids[:4] == (call, legs[2], legs[1], legs[0])


def test_mixmonitors_file_and_channel_come_first() -> None:
    pbx = FakePbx()
    call, (half1, half2, phone) = queue_call(pbx, agents=2, answering=0)
    recording_file(pbx, half2, FILE)
    recording_file(pbx, call, "/elsewhere/later.wav")  # a second MixMonitor: the first counts
    pbx.at(70).hangup(phone, half2, half1, call)
    record = finished(pbx)
    assert record.recording_file == FILE
    assert record.uniqueids[:2] == (half2, call)


def test_a_recording_file_of_a_channel_no_call_has_is_ignored() -> None:
    pbx = FakePbx()
    other = pbx.channel("PJSIP/200-00000001", context="somewhere-else")  # not tracked
    call, legs = queue_call(pbx, agents=1, answering=0)
    recording_file(pbx, other, FILE)
    pbx.at(70).hangup(*legs, call, other)
    record = finished(pbx)
    assert record.recording_file == "" and other not in record.uniqueids
    assert pbx.tracker.table_sizes() == dict.fromkeys(pbx.tracker.table_sizes(), 0)
