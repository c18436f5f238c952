"""Time from a Newchannel leaving the fake AMI server to the fake Kommo receiving the POST.

Run: python tests/benchmarks/bench_e2e_latency.py [CALLS]
Prints p50/p99/max in milliseconds for DID notifications (sent at once, no lookup needed) and
for responsible-user notifications (after a cold lookup), next to the loopback HTTP round trip.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kommo_callerid.config import LogConfig
from kommo_callerid.logging import configure_logging
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values):6.2f}  p99 {p99:6.2f}  max {values[-1]:6.2f}"


async def loopback_rtt(url: str, rounds: int = 200) -> list[float]:
    async with aiohttp.ClientSession() as session:
        times = []
        for _ in range(rounds):
            start = time.monotonic()
            async with session.get(url) as answer:
                await answer.read()
            times.append((time.monotonic() - start) * 1000)
    return times


async def main(calls: int) -> None:
    configure_logging(LogConfig(level="warning", format="json"))
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset(), clock=time.monotonic) as kommo:
        config = make_config(
            ami, kommo, notify={"dids": {"5551000": [7]}}, kommo={"rate_limit": 10_000}
        )
        scenarios = CallScenarios()
        sent: dict[str, float] = {}
        async with running_daemon(config):
            for index in range(calls):
                number = f"1999{index:07d}"
                call = scenarios.inbound(number, agents=())
                sent[number] = time.monotonic()
                await ami.play(call.events)
                await wait_for(lambda n=number: any(e.phone_number == n for e in kommo.events))
                await asyncio.sleep(0.005)
        did = [
            (e.received_at - sent[e.phone_number]) * 1000 for e in kommo.events if e.users == (7,)
        ]
        rtt = await loopback_rtt(f"{kommo.base_url}/healthz-missing")
    print(f"calls: {calls}")
    print(f"Newchannel -> POST (DID users, ms):   {percentiles(did)}")
    print(f"loopback HTTP round trip (ms):        {percentiles(rtt)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
