"""The process under test: the daemon, or a bare panoramisk Manager for comparison.

Run by ``common.Child``: ``child.py daemon|bare CONFIG_JSON``. It prints ``{"ready": ...}`` once
logged in to the AMI server, then answers one-line commands on stdin with one JSON line:
``stats`` (tables, RSS, CPU seconds), ``memory`` (the same after a garbage collection),
``expect N`` (bare: print ``{"done": ...}`` after N more events), ``calls N`` (daemon: print
``{"detected": ...}`` once N inbound calls were detected), ``stop``. Logs go to
/dev/null at the configured level: formatting them is real cost.
With ``BENCH_PROFILE=DIR`` in the environment each child writes a cProfile file into DIR;
with ``BENCH_TRACEMALLOC=N`` the daemon traces allocations and ``memory`` writes the traced
total and peak and the N biggest live allocation sites to stderr (where memory goes; tracing
slows the daemon down several times); with ``BENCH_SLOW_MS=T`` the daemon counts the loop
callbacks that ran longer than T ms, by the task or function they belong to, and prints
their count, total and p50/p90/p99 to stderr when stopped (what holds the loop up).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import ctypes
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import floor
from common import loopback_rtt_ms
from panoramisk import Manager

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.core.logging import configure_logging
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.daemon.memory import freeze_startup_heap


def _daemon_loop() -> Any:
    """The CLI's loop runner; asyncio.run for an older package (a before/after table)."""
    try:
        from kommo_callerid.daemon import event_loop
    except ImportError:
        return asyncio.run
    return event_loop.run


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sqlite_mb() -> float | None:
    """What SQLite holds (its page caches; allocated outside Python's allocator), or None
    when the process's SQLite is not the system's shared library."""
    try:
        return float(ctypes.CDLL("libsqlite3.so.0").sqlite3_memory_used()) / 1e6
    except (OSError, AttributeError):
        return None


def context_switches() -> int:
    """Every thread's context switches so far: each is a wake-up the kernel paid for (a
    figure that, unlike CPU time on a shared VM, repeats from run to run)."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that just ended
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the conditions are plain attributes: poll
            await asyncio.sleep(0.01)


def daemon_tables(daemon: Daemon, collect: bool) -> dict[str, Any]:
    """Every internal table's size (``Daemon.table_sizes``) and the process's RSS and CPU.

    ``collect``: run the garbage collector first, so RSS is what is live.
    """
    running = daemon._running
    assert running is not None
    notifier = running.notifier
    if collect:
        gc.collect()
        _print_allocation_sites()
    return {
        "events": running.events,
        **daemon.table_sizes(),
        "sent": notifier.stats.notifications_sent,
        "dropped": dict(notifier.stats.dropped),
        "ami_dropped": running.links.totals().dropped,
        # getattr: an older package (a "before" figure) has no phone book
        "phonebook_ready": daemon.phonebook_ready if hasattr(daemon, "phonebook_ready") else False,
        "rss_mb": rss_mb(),
        "cpu_s": time.process_time(),
        "sys_s": os.times().system,  # the kernel's share: sends that wake another process
        "switches": context_switches(),
        "blocks": sys.getallocatedblocks(),
        "sqlite_mb": sqlite_mb(),
    }


def _print_allocation_sites() -> None:
    top = int(os.environ.get("BENCH_TRACEMALLOC", "0"))
    if not top or not tracemalloc.is_tracing():
        return
    current, peak = tracemalloc.get_traced_memory()
    print(f"traced: {current / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB", file=sys.stderr)
    for stat in tracemalloc.take_snapshot().statistics("lineno")[:top]:
        print(f"  {stat}", file=sys.stderr)


def _watch_slow_callbacks(threshold_ms: float) -> Callable[[], None]:
    """Diagnosis (``BENCH_SLOW_MS``): count the loop callbacks that ran longer than the
    threshold, by what they were; the returned function prints them to stderr."""
    import asyncio.events
    from collections import Counter

    run = asyncio.events.Handle._run
    slow: Counter[str] = Counter()
    worst: dict[str, float] = {}
    every: dict[str, list[float]] = {}

    def timed(handle: Any) -> None:
        began = time.perf_counter()
        run(handle)
        ms = (time.perf_counter() - began) * 1000
        if ms > threshold_ms:
            callback = handle._callback
            owner = getattr(callback, "__self__", None)
            coro = owner.get_coro() if isinstance(owner, asyncio.Task) else None
            name = getattr(coro, "__qualname__", None) or getattr(
                callback, "__qualname__", repr(callback)
            )
            slow[name] += 1
            worst[name] = max(worst.get(name, 0.0), ms)
            every.setdefault(name, []).append(ms)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def report() -> None:
        for name, count in slow.most_common(12):
            times = sorted(every[name])
            q = [times[int(len(times) * f)] for f in (0.5, 0.9, 0.99)]
            print(
                f"slow {count:6d} total {sum(times):8.1f} ms p50/p90/p99 {q[0]:.2f}/{q[1]:.2f}/"
                f"{q[2]:.2f} worst {worst[name]:7.2f} ms  {name[:60]}",
                file=sys.stderr,
            )

    return report


async def run_daemon(config: dict[str, Any]) -> None:
    slow_ms = os.environ.get("BENCH_SLOW_MS")
    report_slow = _watch_slow_callbacks(float(slow_ms)) if slow_ms else None
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start()
    freeze_startup_heap()  # as the CLI does
    daemon = Daemon(from_mapping(config))
    serving = asyncio.create_task(daemon.serve())
    await wait_for(lambda: daemon.ami_connected or serving.done())
    say({"ready": True, "pid": os.getpid()})
    reader = await commands()
    watchers: set[asyncio.Task[None]] = set()
    while line := (await reader.readline()).decode().strip():
        if line == "stop":
            break
        if line.startswith("calls "):  # say {"detected": ...} once N inbound calls were seen
            watchers.add(asyncio.create_task(_detected(daemon, int(line.split()[1]))))
        say(daemon_tables(daemon, collect=line == "memory"))
    for watcher in watchers:
        watcher.cancel()
    daemon.stop.set()
    await serving
    if report_slow is not None:
        report_slow()
    say({"stopped": True})


async def _detected(daemon: Daemon, calls: int) -> None:
    """When the intake has detected ``calls`` inbound calls (polled every millisecond): the
    stream up to the last call's first channel is read, parsed and decided."""
    running = daemon._running
    assert running is not None
    while running.notifier.stats.calls_incoming < calls:  # noqa: ASYNC110 - a counter: poll
        await asyncio.sleep(0.001)
    say({"detected": time.monotonic(), "cpu_s": time.process_time()})


async def run_bare(config: dict[str, Any]) -> None:
    """panoramisk as its README shows it: a Manager and a no-op handler for every event."""
    ami = config["ami"]
    manager = Manager(
        loop=asyncio.get_running_loop(),
        host="127.0.0.1",
        port=ami["port"],
        username=ami["username"],
        secret=ami["secret"],
        ping_delay=3600,
    )
    state = {"count": 0, "target": -1}

    def on_event(manager: Manager, event: Any) -> None:  # the no-op handler, plus a count
        state["count"] += 1
        if state["count"] == state["target"]:
            say({"done": time.monotonic(), "cpu_s": time.process_time(), "count": state["count"]})

    manager.register_event("*", on_event)
    await manager.connect()
    await wait_for(lambda: manager.authenticated)
    say({"ready": True, "pid": os.getpid()})
    reader = await commands()
    while line := (await reader.readline()).decode().strip():
        if line == "stop":
            break
        if line.startswith("expect "):
            state["count"], state["target"] = 0, int(line.split()[1])
        say({"count": state["count"], "rss_mb": rss_mb(), "cpu_s": time.process_time()})
    manager.close()
    say({"stopped": True})


async def run_floor(config: dict[str, Any]) -> None:
    """The latency floor (see floor.py): the least forwarder, or the cross-process RTT."""

    async def serve() -> None:
        say({"ready": True, "pid": os.getpid()})
        reader = await commands()
        while line := (await reader.readline()).decode().strip():
            if line == "stop":
                break
            if line.startswith("rtt "):
                say({"rtt": await loopback_rtt_ms(line.split()[1])})
            else:
                say({"rss_mb": rss_mb(), "cpu_s": time.process_time()})
        say({"stopped": True})

    if "ami" in config:
        await floor.forward(config, serve)
    else:
        await serve()


def main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    level = config.get("log", {}).get("level", "info")
    with open(os.environ.get("BENCH_LOG", os.devnull), "w") as devnull:
        configure_logging(LogConfig(level=level, format="json"), stream=devnull)
        modes = {"daemon": run_daemon, "bare": run_bare, "floor": run_floor}
        run = modes[mode](config)
        profile_to = os.environ.get("BENCH_PROFILE")  # a directory: one cProfile file per child
        # the daemon on the loop the CLI picks (uvloop when installed); bare panoramisk on asyncio's
        # (BENCH_BARE_FAST=1: on the daemon's too)
        fast = mode == "daemon" or os.environ.get("BENCH_BARE_FAST")
        go = _daemon_loop() if fast else asyncio.run
        if not profile_to:
            go(run)
            return
        with cProfile.Profile() as profile:
            go(run)
        profile.dump_stats(Path(profile_to) / f"{mode}-{os.getpid()}.prof")


if __name__ == "__main__":
    main()
