"""Run every benchmark and print one Markdown table: figure, value, target, result.

    python tests/benchmarks/run.py [--quick] [--full] [--only NAME ...]

``--only issue22`` runs the set issue 22's table needs (see PRESETS).

``--quick`` is a smoke run (smaller counts, same code paths); the figures then say little.
``--full`` adds the slow sizes (the 100,000-call flood).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = False
# An explicit PYTHONPATH picks the package measured (an older tree's ``daemon``): keep it first.
OWN_PACKAGE = [] if os.environ.get("PYTHONPATH") else [str(HERE.parents[1] / "daemon")]
sys.path[:0] = [str(HERE), *OWN_PACKAGE]

from common import Report  # noqa: E402

#: Imported only when run, so ``--only`` works against an older package (PYTHONPATH) that
#: lacks what another benchmark drives (the phone book, recordings).
BENCHMARKS = (
    "ingest",
    "latency",
    "burst",
    "memory",
    "cpu",
    "outcome",
    "logging",
    "cluster",
    "flood",
    "reconnect",
    "journal",
    "pbxs",
    "phonebook",
    "recordings",
    "clicktocall",
)
#: Issue 22's table: latency against the loopback RTT, ingest with the journal on, CPU per
#: call, RSS over 20,000 calls, and the figures that must not regress.
PRESETS = {"issue22": ("ingest", "latency", "cpu", "memory", "flood", "cluster", "journal")}


async def main(quick: bool, only: list[str]) -> Report:
    report = Report()
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        module = importlib.import_module(f"bench_{name}")
        if name == "flood":
            module.FULL = FULL
        started = time.monotonic()
        await module.run(report, quick)
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts")
    parser.add_argument("--full", action="store_true", help="also the slow sizes")
    parser.add_argument("--only", nargs="*", default=[], choices=[*BENCHMARKS, *PRESETS])
    args = parser.parse_args()
    FULL = args.full
    only = [name for choice in args.only for name in PRESETS.get(choice, (choice,))]
    import kommo_callerid  # which tree is measured goes into the output

    print(f"package: {Path(kommo_callerid.__file__).parent}", file=sys.stderr)
    print(asyncio.run(main(args.quick, only)).markdown())
