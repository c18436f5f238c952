"""CPU per call: the daemon's CPU seconds per 1,000 calls in the steady state (calls at 50/s
among the latency run's noise, every caller new, the default recipients: the DID's users,
each ringing agent, the responsible user; each call journaled, ``[journal]`` on). The same
stretch of noise alone is measured too, so the calls' own share shows: CPU per call is the
difference (issue 22: halve it).
"""

from __future__ import annotations

import time

from bench_latency import NOISE_PER_SECOND, SPREAD, TICK, play_calls
from common import BENCH_USERS, Child, Pacer, PbxMix, Report, daemon_config, wire

from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

PER_CALL = 3  # the DID's user and the two ringing agents; Kommo knows no responsible user


async def run(report: Report, quick: bool) -> None:
    calls = 300 if quick else 1500
    mix = PbxMix()
    async with FakeAmiServer(users=BENCH_USERS) as ami, FakeKommo(rate_limit=None) as kommo:
        config = daemon_config(
            ami,
            kommo,
            kommo={"rate_limit": 1000},
            notify={"dids": {"5551000": [7]}, "extensions": {"100": 11, "101": 12}},
        )
        async with Child("daemon", config) as child:

            def new_caller(index: int) -> str:
                return mix.unknown_caller()

            await play_calls(ami, kommo, mix, 50, new_caller, PER_CALL)  # warm up
            before, sys_before, switches_before = _cpu(await child.ask("stats"))
            started = time.monotonic()
            await play_calls(ami, kommo, mix, calls, new_caller, PER_CALL)
            elapsed = time.monotonic() - started
            middle, sys_middle, switches_middle = _cpu(await child.ask("stats"))
            await _noise_only(ami, mix, elapsed)
            after, sys_after, switches_after = _cpu(await child.ask("stats"))
    with_calls, noise = middle - before, after - middle
    report.add(
        "CPU per 1,000 calls (calls + noise / noise alone)",
        f"{with_calls / calls * 1000:.2f} s / {noise / calls * 1000:.2f} s",
    )
    report.add(
        "CPU per call, notified and journaled (net of the noise)",
        f"{(with_calls - noise) / calls * 1000:.2f} ms",
    )
    report.add(
        "of which in the kernel (calls + noise / noise alone)",
        f"{(sys_middle - sys_before) / calls * 1000:.2f} s / "
        f"{(sys_after - sys_middle) / calls * 1000:.2f} s",
    )
    report.add(
        "context switches per call (net of the noise)",
        f"{((switches_middle - switches_before) - (switches_after - switches_middle)) / calls:.1f}",
    )
    report.add(
        f"CPU load at 50 calls/s + {NOISE_PER_SECOND:,} noise events/s",
        f"{with_calls / elapsed:.1%} of a core",
    )


def _cpu(stats: dict[str, float]) -> tuple[float, float, float]:
    """Process CPU, its kernel share and the context switches so far (every child reports
    them: it is the benchmark's, whichever package it measures)."""
    return stats["cpu_s"], stats["sys_s"], stats["switches"]


async def _noise_only(ami: FakeAmiServer, mix: PbxMix, seconds: float) -> None:
    per_write = int(NOISE_PER_SECOND * TICK) // SPREAD  # as play_calls spreads it
    noise = [wire(mix.noise(per_write)) for _ in range(16 * SPREAD)]
    pacer = Pacer(TICK / SPREAD)
    for tick in range(round(seconds / TICK) * SPREAD):
        ami.emit_raw(noise[tick % len(noise)])
        await pacer.tick()
