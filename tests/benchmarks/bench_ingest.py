"""Ingest: how many AMI events per second the client keeps up with, streamed as fast as the
socket takes them.

(a) a bare panoramisk Manager with a no-op handler; (b) the daemon, every event of the mix
sent (no server-side filter); (c) the daemon with its Events mask and Filters honoured by
the server, reported as the PBX event rate it keeps up with: all events of the mix, filtered
ones included, per second. The filtered stream is computed before the clock starts: on a
real PBX Asterisk pays for filtering, not us.

The daemons run with ``[journal]`` on (``common.daemon_config``), as in production. Every
inbound call of the mix (one a cycle, each a new caller to the DID) must be notified: the
count is checked after the marker call's notification. The clock stops when the daemon has
detected the marker call (the last one): the stream read, parsed and decided. Its notification
comes up to 0.5 s later: 2,001 calls in a few seconds is a flood to the notifier, which then
begins new calls every FLOOD_BEGIN_INTERVAL; that figure is printed too.

(a) and (c) are measured in PAIRS, one after the other, and (c)'s ratio is the median of the
pairs' ratios: on a shared machine (a) alone varied 45-72k events/s from one run to the next,
and a ratio of two figures taken a minute apart carried that swing.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from common import (
    BENCH_USERS,
    CHANNEL_EVENTS,
    CYCLE_EVENTS,
    Child,
    PbxMix,
    Report,
    WireEvent,
    call_bytes,
    daemon_config,
    filtered_for,
    wait_until,
    wire,
)

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

MARKER_DID = "5551000"
#: (a), (c) pairs: (c)'s ratio is their median.
PAIRS = 3


@dataclass(frozen=True)
class Ingest:
    """One reader's run over a stream."""

    #: PBX events per second of wall time, up to the last event (the daemon: the last call
    #: detected: the whole stream read, parsed and decided).
    rate: float
    #: The same events per CPU second the reader's process spent on them (all its threads):
    #: what the machine's neighbours do not move (see the module's docstring).
    cpu_rate: float
    #: The daemon: PBX events per second up to the last call's notification (a flood's pacing
    #: of new calls may hold it up to FLOOD_BEGIN_INTERVAL).
    notified_rate: float = 0.0
    #: The daemon: channel events it consumed, and the stream's inbound calls it notified.
    consumed: int = 0
    notified: int = 0


async def bare_rate(events: list[WireEvent]) -> Ingest:
    data = wire(events)
    async with FakeAmiServer(users=BENCH_USERS) as ami, Child("bare", _login(ami)) as child:
        cpu = (await child.ask(f"expect {len(events)}"))["cpu_s"]
        started = time.monotonic()
        await ami.stream(data)
        done = await child.read()
    return Ingest(len(events) / (done["done"] - started), len(events) / (done["cpu_s"] - cpu))


async def daemon_rate(mix: PbxMix, events: list[WireEvent], filtered: bool) -> Ingest:
    async with FakeAmiServer(users=BENCH_USERS) as ami, FakeKommo(rate_limit=None) as kommo:
        config = daemon_config(
            ami,
            kommo,
            kommo={"rate_limit": 1000},
            notify={"dids": {MARKER_DID: [7]}},
        )
        async with Child("daemon", config) as child:
            sent = filtered_for(ami, events) if filtered else events
            marker = mix.inbound(agents=())
            data = wire(sent) + call_bytes(marker.events)
            inbound = len(events) // CYCLE_EVENTS + 1
            # says "detected" when the last call is seen
            cpu = (await child.ask(f"calls {inbound}"))["cpu_s"]
            started = time.monotonic()
            await ami.stream(data)
            detected = await child.read()
            if not await wait_until(lambda: _notified(kommo, marker.caller_num), 120):
                raise RuntimeError("the marker call was never notified")
            elapsed = kommo.events[-1].received_at - started
            await wait_until(lambda: _callers(kommo) >= inbound, 10)
            consumed = (await child.ask("stats"))["events"]
            notified = _callers(kommo)
    return Ingest(
        len(events) / (detected["detected"] - started),
        len(events) / (detected["cpu_s"] - cpu),
        len(events) / elapsed,
        consumed,
        notified,
    )


def _listed(ratios: list[float]) -> str:
    return ", ".join(f"{r:.1f}" for r in ratios)


def _callers(kommo: FakeKommo) -> int:
    return len({e.phone_number for e in kommo.events})


def _notified(kommo: FakeKommo, number: str) -> bool:
    return any(e.phone_number == number for e in reversed(kommo.events))


def _login(ami: FakeAmiServer) -> dict[str, object]:
    return {"ami": {"port": ami.port, "username": DEMO_USERNAME, "secret": DEMO_SECRET}}


async def run(report: Report, quick: bool) -> None:
    cycles = 40 if quick else 250
    mix = PbxMix()
    events = mix.cycles(cycles)
    channel = sum(1 for e in events if e.name in CHANNEL_EVENTS)
    full = await daemon_rate(mix, events, filtered=False)
    # (c) needs a longer stream to last as long: its filter passes about one event in eight.
    long_events = mix.cycles(cycles * 8)
    pairs: list[tuple[Ingest, Ingest]] = []
    for _ in range(1 if quick else PAIRS):
        bare = await bare_rate(events)
        pairs.append((bare, await daemon_rate(mix, long_events, filtered=True)))
    ratios = [kept.rate / bare.rate for bare, kept in pairs]
    cpu_ratios = [kept.cpu_rate / bare.cpu_rate for bare, kept in pairs]
    median = sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]
    (bare, kept), ratio = pairs[median], ratios[median]
    cpu_ratio = statistics.median(cpu_ratios)
    report.add("ingest (a) bare panoramisk, no-op handler", f"{bare.rate:,.0f} events/s")
    report.add(
        "ingest (b) daemon, no server-side filter",
        f"{full.rate:,.0f} events/s ({full.rate / bare.rate:.2f} x a)",
        "≥ 0.9 x a",
        full.rate >= 0.9 * bare.rate,
    )
    report.add(
        "ingest (c) daemon, filters honoured (PBX events/s; the median pair)",
        f"{kept.rate:,.0f} events/s ({ratio:.1f} x a; pairs {_listed(ratios)})",
        "≥ 5 x a (issue 22)",
        ratio >= 5,
    )
    report.add(
        "ingest (c) per CPU second, x a per CPU second (median; pairs)",
        f"{cpu_ratio:.1f} x a ({_listed(cpu_ratios)}); a {bare.cpu_rate:,.0f} events/CPU s",
    )
    report.add(
        "ingest (c) up to the last call's notification (a flood: new calls begun every 0.5 s)",
        f"{kept.notified_rate:,.0f} events/s ({kept.notified_rate / bare.rate:.1f} x a)",
    )
    calls_b, calls_c = cycles + 1, cycles * 8 + 1
    every_c = [kept.notified for _, kept in pairs]
    report.add(
        "ingest: inbound calls notified, (b) / (c) in every pair",
        f"{full.notified:,} of {calls_b:,} / {', '.join(f'{n:,}' for n in every_c)} of {calls_c:,}",
        "all",
        full.notified == calls_b and all(n == calls_c for n in every_c),
    )
    report.add(
        "ingest mix",
        f"{len(events):,} events (b), {len(long_events):,} (c); "
        f"{channel / len(events):.1%} channel events; "
        f"consumed {full.consumed:,} / {kept.consumed:,}; [journal] on",
    )
