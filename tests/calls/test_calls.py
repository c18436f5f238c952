"""Call detection: pure rules, no I/O."""

from __future__ import annotations

import pytest

from kommo_callerid.calls.detector import (
    CallEnded,
    CallStarted,
    CallTracker,
    ChannelSkipped,
    Decision,
    LegRinging,
    SkipReason,
    channel_extension,
    normalize_number,
)
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

NEW = ChannelEventKind.NEWCHANNEL
CID = ChannelEventKind.NEWCALLERID
HANGUP = ChannelEventKind.HANGUP


def event(
    kind: ChannelEventKind,
    channel: str,
    uniqueid: str,
    linkedid: str | None = None,
    num: str = "18305803077",
    context: str = "from-trunk",
    exten: str = "5551000",
    at: float = 0.0,
) -> ChannelEvent:
    return ChannelEvent(
        kind, channel, uniqueid, linkedid or uniqueid, num, "John Doe", context, exten, at
    )


def tracker(**kwargs: object) -> CallTracker:
    options: dict[str, object] = {
        "inbound_contexts": ["from-trunk", "from-pstn*"],
        "min_digits": 7,
    }
    options.update(kwargs)
    return CallTracker(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("18305803077", "", "18305803077"),
        ("+1 (830) 580-3077", "", "+18305803077"),
        ("0049 30.1234567", "", "+49301234567"),
        ("8 (916) 123-45-67", "RU", "+79161234567"),
        ("(830) 580-3077", "US", "+18305803077"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("sip:alice", "", None),
        ("12ab", "", None),
        ("١٢٣٤٥٦٧", "", None),
    ],
)
def test_normalize_number(raw: str, region: str, expected: str | None) -> None:
    assert normalize_number(raw, region) == expected


@pytest.mark.parametrize(
    ("channel", "extension"),
    [
        ("PJSIP/101-0000001b", "101"),
        ("SIP/101-00000a53", "101"),
        ("IAX2/101-12345", "101"),
        ("PJSIP/my-trunk-0000001b", "my-trunk"),
        ("Local/100@agents-00000004;1", "100"),
        ("DAHDI/1-1", "1"),
    ],
)
def test_channel_extension(channel: str, extension: str) -> None:
    assert channel_extension(channel) == extension


def test_inbound_call_with_legs_makes_one_call() -> None:
    t = tracker()
    started = t.feed(event(NEW, "IAX2/carrier-1", "1.1"))
    assert started == [
        CallStarted("1.1", "18305803077", "John Doe", "5551000", "IAX2/carrier-1", 0.0)
    ]
    assert t.feed(event(NEW, "Local/100@agents-0001;1", "1.2", "1.1", context="agents")) == [
        LegRinging("1.1", "100", "Local/100@agents-0001;1")
    ]
    half = t.feed(event(NEW, "Local/100@agents-0001;2", "1.3", "1.1", context="agents"))
    assert [d.reason for d in half if isinstance(d, ChannelSkipped)] == [SkipReason.DUPLICATE]
    phone = t.feed(event(NEW, "PJSIP/100-0002", "1.4", "1.1", context="from-internal"))
    assert [d.reason for d in phone if isinstance(d, ChannelSkipped)] == [SkipReason.DUPLICATE]
    assert t.feed(event(NEW, "PJSIP/101-0003", "1.5", "1.1")) == [
        LegRinging("1.1", "101", "PJSIP/101-0003")
    ]
    assert t.feed(event(HANGUP, "PJSIP/101-0003", "1.5", "1.1")) == []
    assert t.feed(event(HANGUP, "IAX2/carrier-1", "1.1")) == [CallEnded("1.1")]
    assert len(t) == 0


@pytest.mark.parametrize("num", ["anonymous", "Restricted", "PRIVATE", "unavailable"])
def test_withheld_caller_is_skipped_once(num: str) -> None:
    t = tracker()
    first = t.feed(event(NEW, "IAX2/carrier-1", "2.1", num=num))
    assert first == [ChannelSkipped("2.1", SkipReason.ANONYMOUS, num, "IAX2/carrier-1", "5551000")]
    assert t.feed(event(NEW, "Local/100@agents-1;1", "2.2", "2.1", num=num)) == []
    assert t.feed(event(HANGUP, "IAX2/carrier-1", "2.1", num=num)) == []
    assert len(t) == 0


def test_unknown_caller_is_skipped_at_hangup() -> None:
    t = tracker()
    assert t.feed(event(NEW, "IAX2/carrier-1", "3.1", num="<unknown>")) == []
    skipped = t.feed(event(HANGUP, "IAX2/carrier-1", "3.1", num="<unknown>"))
    assert [d.reason for d in skipped if isinstance(d, ChannelSkipped)] == [SkipReason.ANONYMOUS]


def test_local_root_learns_number_from_newcallerid() -> None:
    """Recording asterisk-22/03: the root is born <unknown>, the number comes later."""
    t = tracker()
    root = "Local/5551000@from-trunk-00000006;1"
    assert t.feed(event(NEW, root, "4.1", num="<unknown>")) == []
    assert t.feed(event(NEW, root[:-1] + "2", "4.2", "4.1", num="<unknown>")) == []
    agent = event(NEW, "Local/100@agents-7;1", "4.3", "4.1", num="<unknown>", context="agents")
    assert t.feed(agent) == []  # rings before the number is known: held back
    decisions = t.feed(event(CID, root, "4.1"))
    assert decisions == [
        CallStarted("4.1", "18305803077", "John Doe", "5551000", root, 0.0),
        LegRinging("4.1", "100", "Local/100@agents-7;1"),
    ]
    assert t.feed(event(CID, root, "4.1")) == []  # a second NewCallerid changes nothing


def test_internal_and_outbound_calls_are_skipped() -> None:
    t = tracker()
    internal = t.feed(event(NEW, "PJSIP/101-1", "5.1", num="101"))
    assert [d.reason for d in internal if isinstance(d, ChannelSkipped)] == [SkipReason.INTERNAL]
    outbound = t.feed(event(NEW, "PJSIP/101-2", "5.2", context="from-internal"))
    assert [d.reason for d in outbound if isinstance(d, ChannelSkipped)] == [SkipReason.NOT_INBOUND]
    assert t.feed(event(NEW, "PJSIP/trunk-3", "5.3", "5.2", context="from-internal")) == []
    assert len(t) == 0


def test_context_patterns_are_fnmatch() -> None:
    t = tracker()
    decisions = t.feed(event(NEW, "DAHDI/1-1", "6.1", context="from-pstn-toheader"))
    assert isinstance(decisions[0], CallStarted)
    assert not t.is_inbound_context("from-trunk-queue")


def test_repeated_root_newchannel_is_a_duplicate() -> None:
    t = tracker()
    t.feed(event(NEW, "IAX2/carrier-1", "7.1"))
    again = t.feed(event(NEW, "IAX2/carrier-1", "7.1"))
    assert [d.reason for d in again if isinstance(d, ChannelSkipped)] == [SkipReason.DUPLICATE]


def test_missing_linkedid_each_channel_is_its_own_call() -> None:
    """Asterisk < 13.5 sends no Linkedid: ami.py sets linkedid = uniqueid."""
    t = tracker()
    assert isinstance(t.feed(event(NEW, "SIP/carrier-1", "8.1"))[0], CallStarted)
    leg = t.feed(event(NEW, "SIP/101-2", "8.2", context="from-internal"))
    assert [d.reason for d in leg if isinstance(d, ChannelSkipped)] == [SkipReason.NOT_INBOUND]


def test_state_is_bounded_by_age_and_count() -> None:
    t = tracker(max_calls=100, max_age=60.0)
    for i in range(1000):
        t.feed(event(NEW, f"IAX2/carrier-{i}", f"9.{i}", at=float(i) * 0.01))
    assert len(t) == 100
    ended = t.expire(now=10_000.0)
    assert len(ended) == 100 and all(isinstance(d, CallEnded) for d in ended)
    assert len(t) == 0


def test_forget_all_after_reconnect() -> None:
    t = tracker()
    t.feed(event(NEW, "IAX2/carrier-1", "10.1"))
    t.feed(event(NEW, "IAX2/carrier-2", "10.2", num="<unknown>"))
    decisions = t.forget_all()
    assert CallEnded("10.1") in decisions
    assert len(t) == 0


def legacy(
    kind: ChannelEventKind, channel: str, uniqueid: str, num: str = "", exten: str = ""
) -> ChannelEvent:
    """An AMI 1.x event (Asterisk 11 and older): no Linkedid, so linkedid is the Uniqueid."""
    return ChannelEvent(
        kind, channel, uniqueid, uniqueid, num, "", "from-trunk", exten, 0.0, has_linkedid=False
    )


def started(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.call_id, d.number) for d in decisions if isinstance(d, CallStarted)]


def test_ami1_a_dialled_trunk_leg_that_learns_its_number_before_its_dial_is_no_caller() -> None:
    """Asterisk 11 sends the leg's Newchannel (no extension, no number), its NewCallerid and
    only then the Dial that asked for it: born at no extension, it was requested."""
    t = tracker()
    decisions = t.feed(legacy(NEW, "SIP/carrier-2", "11.2"))
    decisions += t.feed(legacy(CID, "SIP/carrier-2", "11.2", num="31612345678"))
    assert started(decisions) == []
    assert [d.reason for d in decisions if isinstance(d, ChannelSkipped)] == [
        SkipReason.NOT_INBOUND
    ]
    assert len(t) == 0


def test_ami1_a_local_half_in_an_inbound_context_is_no_caller() -> None:
    """A Local pair is always requested (Dial, Queue, Originate); its ;1 half learns the
    caller's number before the Dial that asked for it arrives."""
    t = tracker()
    decisions: list[Decision] = []
    for half in ("1", "2"):
        channel = f"Local/5551000@from-trunk-00000001;{half}"
        decisions += t.feed(legacy(NEW, channel, f"12.{half}", exten="5551000"))
        decisions += t.feed(legacy(CID, channel, f"12.{half}", num="18305803077"))
    assert started(decisions) == []
    assert len(t) == 0


def test_ami1_a_masquerade_clone_of_the_caller_is_not_a_second_caller() -> None:
    """A ``Parked/`` clone copies the caller's context and DID but not its number; the
    masquerade renames it to the caller's channel, whose number then shows on it."""
    t = tracker()
    first = t.feed(legacy(NEW, "SIP/carrier-1", "13.1", num="18305803077", exten="5551000"))
    assert started(first) == [("13.1", "18305803077")]
    clone = t.feed(legacy(NEW, "Parked/SIP/carrier-1", "13.9", exten="5551000"))
    clone += t.feed(legacy(CID, "SIP/carrier-1", "13.9", num="18305803077"))
    assert started(clone) == []
    assert len(t) == 1  # the caller's call only


def test_ami1_an_inbound_channel_that_learns_its_number_late_is_still_a_caller() -> None:
    """An analog line is born at ``s`` and gets the caller ID after its first ring."""
    t = tracker()
    decisions = t.feed(legacy(NEW, "DAHDI/1-1", "14.1", exten="s"))
    decisions += t.feed(legacy(CID, "DAHDI/1-1", "14.1", num="18305803077"))
    assert started(decisions) == [("14.1", "18305803077")]
