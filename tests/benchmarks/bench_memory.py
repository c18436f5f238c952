"""Memory and state: RSS and the size of every internal table after 10k, 50k and 100k calls,
each with its Hangups, every caller a new number (so the lookup cache and the notifier's
seen-set fill to their caps). Calls go out in batches as fast as the daemon notifies them.
Target: RSS grows at most 5 MB from 50k to 100k calls, and every table stays bounded; issue 22:
RSS flat (within 1 MB) from 10k to 20k calls.
"""

from __future__ import annotations

from typing import Any

from common import BENCH_USERS, Child, PbxMix, Report, call_bytes, daemon_config, wait_until

from kommo_callerid.core.config import CacheConfig
from kommo_callerid.daemon.notifier import SEEN_CALLS
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

BATCH = 200
TABLES = ("tracker", "active", "seen", "cache", "inflight", "tasks", "queue")
#: The tables with a cap; the others hold only calls in progress, none once all have ended.
CAPS = {"seen": SEEN_CALLS, "cache": CacheConfig().max_entries}


async def run(report: Report, quick: bool) -> None:
    checkpoints = (1_000, 2_000, 5_000, 10_000) if quick else (10_000, 20_000, 50_000, 100_000)
    mix = PbxMix()
    seen: dict[int, dict[str, Any]] = {}
    async with FakeAmiServer(users=BENCH_USERS) as ami, FakeKommo(rate_limit=None) as kommo:
        config = daemon_config(
            ami,
            kommo,
            kommo={"rate_limit": 1000},
            notify={"to": ["did", "responsible"], "dids": {"5551000": [7]}},
        )
        async with Child("daemon", config) as child:
            done = 0
            for checkpoint in checkpoints:
                while done < checkpoint:
                    calls = [mix.inbound(agents=("100",)) for _ in range(BATCH)]
                    ami.emit_raw(b"".join(call_bytes(c.all_events) for c in calls))
                    done += BATCH
                    await _caught_up(kommo, done)
                await wait_until(lambda: False, 0.3)  # let lookups and tasks finish
                seen[checkpoint] = await child.ask("memory")
    for checkpoint, tables in seen.items():
        sizes = ", ".join(f"{name} {tables[name]:,}" for name in TABLES)
        report.add(f"memory after {checkpoint:,} calls", f"RSS {tables['rss_mb']:.1f} MB; {sizes}")
    first, second = seen[checkpoints[0]], seen[checkpoints[1]]
    flat = second["rss_mb"] - first["rss_mb"]
    report.add(
        f"memory growth {checkpoints[0]:,} -> {checkpoints[1]:,} calls (RSS flat)",
        f"{flat:+.1f} MB",
        "≤ 1 MB",
        flat <= 1,
    )
    middle, last = seen[checkpoints[-2]], seen[checkpoints[-1]]
    growth = last["rss_mb"] - middle["rss_mb"]
    report.add(
        f"memory growth {checkpoints[-2]:,} -> {checkpoints[-1]:,} calls",
        f"{growth:+.1f} MB",
        "≤ 5 MB",
        growth <= 5,
    )
    over = {name: last[name] for name in TABLES if last[name] > CAPS.get(name, 0)}
    report.add(
        "tables bounded (seen, cache at their caps; the rest empty when idle)",
        "yes" if not over else f"no: {over}",
        "bounded",
        not over,
    )


async def _caught_up(kommo: FakeKommo, calls: int) -> None:
    if not await wait_until(lambda: len(kommo.events) >= calls, 60):
        raise RuntimeError(f"only {len(kommo.events)} of {calls} calls were notified")
