"""Outcome tracking: how fast the pure tracker follows calls to their end, and what it keeps.

Each call is the shape of an answered queue call: a trunk root, a ``Local/EXT@agents`` pair,
the agent's phone, two DialEnd, four BridgeEnter and four Hangup (13 events), every call
unique. Fed straight to :class:`OutcomeTracker` (no sockets): the cost the daemon's intake
loop pays per event on top of call detection. Target: well above a busy PBX's call events
(tens of thousands a second) and no state left once every call has ended.
"""

from __future__ import annotations

import time

from common import Report

from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.core.models import ChannelEvent, ChannelEventKind

K = ChannelEventKind


def call_events(n: int) -> list[ChannelEvent]:
    root, one, two, phone = (f"{1_800_000_000 + n}.{i}" for i in range(4))
    agent = str(100 + n % 50)
    names = {
        root: f"PJSIP/carrier-{n:08x}",
        one: f"Local/{agent}@agents-{n:08x};1",
        two: f"Local/{agent}@agents-{n:08x};2",
        phone: f"PJSIP/{agent}-{n:08x}",
    }

    def event(kind: K, uniqueid: str, **extra: str) -> ChannelEvent:
        caller = "1830" + f"{n:07d}" if uniqueid == root else "<unknown>"
        return ChannelEvent(
            kind, names[uniqueid], uniqueid, root, caller, "", "from-trunk", "5551000", float(n),
            dest_channel=names.get(extra.get("dest", ""), ""),
            dest_uniqueid=extra.get("dest", ""),
            dial_status=extra.get("status", ""),
            bridge_id=extra.get("bridge", ""),
        )  # fmt: skip

    return [
        *(event(K.NEWCHANNEL, u) for u in (root, one, two, phone)),
        event(K.DIAL_END, two, dest=phone, status="ANSWER"),
        event(K.DIAL_END, root, dest=one, status="ANSWER"),
        *(event(K.BRIDGE_ENTER, u, bridge=f"in-{n}") for u in (phone, two)),
        *(event(K.BRIDGE_ENTER, u, bridge=f"out-{n}") for u in (one, root)),
        *(event(K.HANGUP, u) for u in (two, one, phone, root)),
    ]


async def run(report: Report, quick: bool) -> None:
    calls = 10_000 if quick else 100_000
    events = [e for n in range(calls) for e in call_events(n)]
    tracker = OutcomeTracker(["from-trunk"], ["from-internal"], 7)
    started = time.perf_counter()
    finished = sum(len(tracker.feed(event)) for event in events)
    seconds = time.perf_counter() - started
    left = sum(tracker.table_sizes().values())
    report.add(
        "outcome tracker throughput",
        f"{len(events) / seconds:,.0f} events/s ({seconds / calls * 1e6:.1f} µs per call)",
        "≥ 100,000 events/s",
        len(events) / seconds >= 100_000,
    )
    report.add(
        "outcome tracker state after every call ended",
        f"{finished:,} records of {calls:,} calls; {left} table entries left",
        "0 left",
        left == 0 and finished == calls,
    )
