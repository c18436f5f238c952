"""Kommo requests under a burst: 100 inbound calls within one second against a fake Kommo
that enforces 7 requests/s (Kommo's limit), first with a cold lookup cache, then the same
callers again with a warm one.

Run: python tests/benchmarks/bench_kommo_requests.py [CALLS]
Prints the peak requests in any 1-second window as the server saw them, rate-limit
violations, requests per notified call, and the time until the last notification.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.logging import configure_logging
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

from support import make_config, running_daemon, wait_for

RATE_LIMIT = 7


def peak_per_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + 1.0) for start in ordered)


async def quiet(kommo: FakeKommo, seconds: float = 1.5) -> None:
    """Wait until the fake has received no request for ``seconds``."""
    seen = -1
    while seen != len(kommo.requests):
        seen = len(kommo.requests)
        await asyncio.sleep(seconds)


async def burst(
    ami: FakeAmiServer, kommo: FakeKommo, calls: list[SyntheticCall]
) -> dict[str, float]:
    requests_before, events_before = len(kommo.requests), len(kommo.events)
    started = time.monotonic()
    for call in calls:
        await ami.play(call.events)
        await asyncio.sleep(1 / len(calls))
    placed = time.monotonic() - started
    await wait_for(lambda: len(kommo.events) - events_before >= len(calls), 120)
    await quiet(kommo)  # the lookups queued behind the notifications land too
    requests = kommo.requests[requests_before:]
    events = kommo.events[events_before:]
    notified = {event.phone_number for event in events}
    paths = Counter(record.path for record in requests)
    return {
        "calls placed in (s)": round(placed, 2),
        "calls notified": len(notified),
        "notifications": len(events),
        "requests": len(requests),
        "requests per notified call": round(len(requests) / len(notified), 2),
        "  of which by_phone": paths["/api/v2/search/by_phone"],
        "  of which events": paths["/api/v2/events"],
        "peak requests in any 1 s": peak_per_second([r.at for r in requests]),
        "last notification after (s)": round(max(e.received_at for e in events) - started, 1),
        "last request after (s)": round(max(r.at for r in requests) - started, 1),
    }


async def main(count: int) -> None:
    configure_logging(LogConfig(level="error", format="json"))
    scenarios = CallScenarios()  # one instance: the second burst gets new call ids
    async with FakeAmiServer() as ami, FakeKommo(rate_limit=RATE_LIMIT) as kommo:
        config = make_config(ami, kommo, kommo={"rate_limit": RATE_LIMIT})
        async with running_daemon(config):
            cold = await burst(ami, kommo, scenarios.inbound_calls(count))
            warm = await burst(ami, kommo, scenarios.inbound_calls(count))
    print(f"{count} calls in ~1 s, fake Kommo enforcing {RATE_LIMIT} req/s, notify_ttl 45 s")
    print(f"{'':32} {'cold cache':>12} {'warm cache':>12}")
    for key in cold:
        print(f"{key:32} {cold[key]:>12} {warm[key]:>12}")
    print(f"rate-limit violations seen by the fake: {kommo.violations}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
