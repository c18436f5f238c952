"""Run every benchmark and print one Markdown table: figure, value, target, result.

    python tests/benchmarks/run.py [--quick] [--full] [--only NAME ...]

``--quick`` is a smoke run (smaller counts, same code paths); the figures then say little.
``--full`` adds the slow sizes (the 100,000-call flood).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent / "daemon")]

import bench_burst  # noqa: E402
import bench_clicktocall  # noqa: E402
import bench_cluster  # noqa: E402
import bench_cpu  # noqa: E402
import bench_flood  # noqa: E402
import bench_ingest  # noqa: E402
import bench_journal  # noqa: E402
import bench_latency  # noqa: E402
import bench_logging  # noqa: E402
import bench_memory  # noqa: E402
import bench_outcome  # noqa: E402
import bench_pbxs  # noqa: E402
import bench_phonebook  # noqa: E402
import bench_reconnect  # noqa: E402
import bench_recordings  # noqa: E402
from common import Report  # noqa: E402

BENCHMARKS = {
    "ingest": bench_ingest,
    "latency": bench_latency,
    "burst": bench_burst,
    "memory": bench_memory,
    "cpu": bench_cpu,
    "outcome": bench_outcome,
    "logging": bench_logging,
    "cluster": bench_cluster,
    "flood": bench_flood,
    "reconnect": bench_reconnect,
    "journal": bench_journal,
    "pbxs": bench_pbxs,
    "phonebook": bench_phonebook,
    "recordings": bench_recordings,
    "clicktocall": bench_clicktocall,
}


async def main(quick: bool, only: list[str]) -> Report:
    report = Report()
    for name, module in BENCHMARKS.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        await module.run(report, quick)
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts")
    parser.add_argument("--full", action="store_true", help="also the slow sizes")
    parser.add_argument("--only", nargs="*", default=[], choices=list(BENCHMARKS))
    args = parser.parse_args()
    bench_flood.FULL = args.full
    print(asyncio.run(main(args.quick, args.only)).markdown())
