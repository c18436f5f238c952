"""Several PBXs in the pure call logic: one tracker each, NAME/KEY recipients."""

from __future__ import annotations

from kommo_callerid.calls.detector import CallEnded, CallStarted, ChannelSkipped, SkipReason
from kommo_callerid.calls.pbx_calls import PbxCallTrackers
from kommo_callerid.calls.recipients import for_pbx
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

NEW = ChannelEventKind.NEWCHANNEL


def root(pbx: str, linkedid: str = "1700000000.1", context: str = "from-trunk") -> ChannelEvent:
    return ChannelEvent(
        NEW,
        "PJSIP/carrier-1",
        linkedid,
        linkedid,
        "18305803077",
        "",
        context,
        "5551000",
        0.0,
        pbx=pbx,
    )


def trackers() -> PbxCallTrackers:
    return PbxCallTrackers.build(
        [("north", ["from-trunk"]), ("south", ["from-pstn*"])], min_digits=7
    )


def test_the_same_linkedid_on_two_pbxs_is_two_calls() -> None:
    calls = trackers()
    (north,) = calls.feed(root("north"))
    (south,) = calls.feed(root("south", context="from-pstn-uk"))
    assert isinstance(north, CallStarted)
    assert isinstance(south, CallStarted)
    assert (north.call_id, north.pbx) == ("north/1700000000.1", "north")
    assert (south.call_id, south.pbx) == ("south/1700000000.1", "south")
    assert len(calls) == 2


def test_each_pbx_keeps_its_own_inbound_contexts() -> None:
    calls = trackers()
    (skipped,) = calls.feed(root("south", context="from-trunk"))
    assert isinstance(skipped, ChannelSkipped)
    assert (skipped.reason, skipped.pbx, skipped.call_id) == (
        SkipReason.NOT_INBOUND,
        "south",
        "south/1700000000.1",
    )


def test_a_lost_link_forgets_only_its_own_pbx() -> None:
    calls = trackers()
    calls.feed(root("north"))
    calls.feed(root("south", context="from-pstn"))
    assert calls.feed(ChannelEvent.link_lost(1.0, "south")) == [CallEnded("south/1700000000.1")]
    assert len(calls) == 1


def test_one_unnamed_pbx_keeps_the_bare_linkedid() -> None:
    calls = PbxCallTrackers.build([("", ["from-trunk"])], min_digits=7)
    (started,) = calls.feed(root(""))
    assert isinstance(started, CallStarted)
    assert (started.call_id, started.pbx) == ("1700000000.1", "")


def test_an_event_of_an_unknown_pbx_is_ignored() -> None:
    assert trackers().feed(root("west")) == []


def test_pbx_keys_win_over_bare_keys() -> None:
    extensions = {"north/101": 1, "101": 2, "south/102": 3}
    assert for_pbx(extensions, "north", "101") == 1
    assert for_pbx(extensions, "south", "101") == 2  # no south/101: the bare key
    assert for_pbx(extensions, "north", "102") is None  # south/102 is south's only
    assert for_pbx(extensions, "", "101") == 2


def test_an_ami_1x_dial_drops_a_dialled_trunk_leg_of_a_named_pbx() -> None:
    calls = trackers()
    leg = ChannelEvent(
        NEW,
        "SIP/trunk-2",
        "1700000000.2",
        "1700000000.2",
        "",
        "",
        "from-trunk",
        "s",
        0.0,
        pbx="north",
    )
    assert calls.feed(leg) == []  # waits for its caller number
    dial = ChannelEvent(
        ChannelEventKind.DIAL_LEGACY,
        "SIP/trunk-2",
        "1700000000.2",
        "1700000000.1",
        "",
        "",
        "",
        "18005551234",
        0.1,
        pbx="north",
    )
    (skipped,) = calls.feed(dial)
    assert isinstance(skipped, ChannelSkipped)
    assert (skipped.call_id, skipped.pbx, skipped.reason) == (
        "north/1700000000.2",
        "north",
        SkipReason.NOT_INBOUND,
    )
    assert len(calls) == 0
