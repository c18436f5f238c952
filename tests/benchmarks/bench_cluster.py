"""Cluster mode and batched notifications, against a fake Kommo allowing 7 requests/s.

* the 500-call burst (500 calls within one second, DID recipients only) with and without
  batching: notified, dropped, when the last notification arrived, requests used;
* cluster overhead per notification: from the call's Newchannel written by the fake PBX to
  the fake Kommo receiving its notification, p50/p99, alone and with ``[cluster]`` (a
  private redis-server on loopback);
* three daemons, three PBXs, 300 calls in 10 s: the aggregate rate as the fake saw it.

The daemons run in this process (what is measured is requests and latency, not CPU).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from common import JOURNALS, Report, percentile

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.kommo import batch
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from redis_server import RedisServer

KOMMO_RATE = 7
DID = "5551000"


def _config(ami: FakeAmiServer, kommo: FakeKommo, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "ami": {"port": ami.port, "username": DEMO_USERNAME, "secret": DEMO_SECRET},
        "kommo": {"base_url": kommo.base_url, "access_token": kommo.token},
        "notify": {"dids": {DID: [7]}, "to": ["did", "responsible"]},
        "log": {"level": "warning", "format": "json"},
        "daemon": {"shutdown_timeout": 0.5},
        # a journal of its own, as in every benchmark: the default path (/var/lib/...) does not
        # exist on a developer's box, and at e2cdd24 a daemon whose journal cannot be opened
        # never began notifying (this benchmark then waited for ever)
        "journal": {"database": str(JOURNALS / f"cluster-{time.monotonic_ns()}.sqlite3")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(data)


@asynccontextmanager
async def _daemon(config: Config) -> AsyncIterator[Daemon]:
    daemon = Daemon(config)
    serving = asyncio.create_task(daemon.serve())
    try:
        while not daemon.ami_connected and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        yield daemon
    finally:
        daemon.stop.set()
        await serving


async def run(report: Report, quick: bool) -> None:
    for batching in (False, True):
        await _burst(report, quick, batching)
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        await redis.start()
        try:
            alone = await _latency(quick, None)
            clustered = await _latency(quick, redis.url)
            report.add("cluster: notification latency p50 / p99, alone", alone)
            report.add("cluster: notification latency p50 / p99, with Redis", clustered)
            await _aggregate(report, quick, redis.url)
        finally:
            await redis.stop()


async def _burst(report: Report, quick: bool, batching: bool) -> None:
    calls = 50 if quick else 500
    scenarios = CallScenarios()
    burst = [scenarios.inbound(f"1830{n:07d}", did=DID) for n in range(calls)]
    batch.MAX_ITEMS = 50 if batching else 1
    try:
        async with FakeAmiServer() as ami, FakeKommo(rate_limit=KOMMO_RATE) as kommo:
            loop = asyncio.get_running_loop()
            async with _daemon(_config(ami, kommo)) as daemon:
                started = loop.time()
                for tenth in range(10):
                    for call in burst[tenth::10]:
                        await ami.play(call.events)
                    await asyncio.sleep(0.1)
                await _settled(daemon, calls, 45 + 5)
    finally:
        batch.MAX_ITEMS = 50
    label = "with" if batching else "without"
    last = max((e.received_at for e in kommo.events), default=started) - started
    notified = len({e.phone_number for e in kommo.events})
    report.add(
        f"burst {label} batching: notified / not notified / last at / requests",
        f"{notified} / {calls - notified} / {last:.1f} s / "
        f"{kommo.requests_to(EVENTS_PATH)} notify of {len(kommo.requests)}",
        f"{calls} / 0" if batching else "",
        (notified == calls and kommo.violations == 0) if batching else None,
    )


async def _settled(daemon: Daemon, calls: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        running = daemon._running
        if running is not None:
            stats = running.notifier.stats
            if stats.notifications_sent + stats.notifications_dropped >= calls:
                return
        await asyncio.sleep(0.1)


async def _latency(quick: bool, redis_url: str | None) -> str:
    calls = 20 if quick else 100
    scenarios = CallScenarios()
    cluster = {"cluster": {"redis_url": redis_url, "node": "bench"}} if redis_url else {}
    samples: list[float] = []
    async with FakeAmiServer() as ami, FakeKommo() as kommo:
        loop = asyncio.get_running_loop()
        async with _daemon(_config(ami, kommo, **cluster)):
            for n in range(calls):
                call = scenarios.inbound(f"1831{n:07d}", did=DID)
                sent = loop.time()
                await ami.play(call.events)
                give_up = sent + 10.0  # a call never notified must not hang the run
                while len(kommo.events) <= n and loop.time() < give_up:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
                if len(kommo.events) <= n:
                    raise RuntimeError(f"call {n} was not notified within 10 s")
                samples.append((kommo.events[n].received_at - sent) * 1000)
                await asyncio.sleep(0.4)  # a lookup and a notification per call: under 7/s
    return _spread(samples)


def _spread(values_ms: Sequence[float]) -> str:
    return f"{statistics.median(values_ms):.2f} / {percentile(values_ms, 0.99):.2f} ms"


async def _aggregate(report: Report, quick: bool, redis_url: str) -> None:
    seconds = 3 if quick else 10
    async with AsyncExitStack() as stack:
        pbxs = [await stack.enter_async_context(FakeAmiServer()) for _ in range(3)]
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=KOMMO_RATE))
        for index, ami in enumerate(pbxs):
            cluster = {"redis_url": redis_url, "node": f"n{index}", "expected_nodes": 3}
            await stack.enter_async_context(_daemon(_config(ami, kommo, cluster=cluster)))
        sources = [CallScenarios(epoch=1_700_000_000 + i * 10_000_000) for i in range(3)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 0
        for _ in range(seconds * 10):
            for pbx, (ami, source) in enumerate(zip(pbxs, sources, strict=True)):
                count += 1
                await ami.play(source.inbound(f"18{pbx}{count:08d}", did=DID).events)
            await asyncio.sleep(0.1)
        give_up = started + 60
        while len({e.phone_number for e in kommo.events}) < count:
            if loop.time() > give_up:
                break
            await asyncio.sleep(0.1)
        elapsed = loop.time() - started
    times = sorted(r.at for r in kommo.requests)
    busiest = max(
        (sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times)), default=0
    )
    notified = len({e.phone_number for e in kommo.events})
    report.add(
        "3 daemons: calls notified (once each) / requests / busiest 1-s window",
        f"{notified} of {count} ({len(kommo.events)} notifications) / {len(times)} in "
        f"{elapsed:.0f} s / {busiest}",
        f"{count} / ≤ {KOMMO_RATE}",
        notified == count == len(kommo.events) and busiest <= KOMMO_RATE,
    )
    report.add(
        "3 daemons: rate-limit violations", str(kommo.violations), "0", kommo.violations == 0
    )
