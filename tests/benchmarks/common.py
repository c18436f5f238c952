"""What the benchmarks share: the PBX traffic mix, the daemon in a process of its own, figures.

The daemon under test runs in a child process (``child.py``), as in production: the fake AMI
server and the fake Kommo run here, so their work never counts as the daemon's, and CPU and
memory are the child's alone.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kommo_callerid.core.models import ChannelEventKind
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.recording import events_only, format_message, read_recording
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE.parent / "data" / "ami-recordings" / "asterisk-22"
NOISE_RECORDINGS = ("13-inbound-answered-admin-read-all.txt", "14-inbound-queue-admin-read-all.txt")
#: Every event the daemon reads (call detection and the outcome tracker).
#: (VarSet: only MIXMONITOR_FILENAME's, which the recordings hold none of; the others are noise.)
#: By name, so an older package (PYTHONPATH, for a before/after table) lacking a kind works.
CHANNEL_EVENTS = frozenset(
    k.value for k in ChannelEventKind if k.name not in ("LINK_LOST", "RECORDING_FILE")
)
#: An admin-like AMI user: sees everything unless the daemon narrows it (it may: write=system).
BENCH_USERS = {DEMO_USERNAME: AmiUser(DEMO_SECRET, read=frozenset({"all"}))}
#: Per cycle: one inbound call ringing two agents through Local channels and 19 internal
#: calls make 45 Newchannel (5 % of the cycle), 25 NewCallerid and 45 Hangup events.
INTERNAL_PER_CYCLE = 19
CYCLE_EVENTS = 900
#: The journal's databases of the benchmark daemons (its default path is under /var/lib).
JOURNALS = Path(tempfile.mkdtemp(prefix="kommo-callerid-bench-"))
atexit.register(shutil.rmtree, JOURNALS, True)
KNOWN_CALLERS = ("18305803077", "14155550199", "442079460958", "74951234567", "16465550123")


# ---- traffic --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One AMI event as bytes on the wire, with what a server needs to filter it."""

    data: bytes
    classes: frozenset[str]
    name: str

    @classmethod
    def of(cls, event: dict[str, str]) -> WireEvent:
        privilege = event.get("Privilege", "")
        classes = frozenset(c.strip() for c in privilege.split(",") if c.strip()) - {"all"}
        return cls(format_message(event), classes, event.get("Event", ""))


def noise_events() -> list[WireEvent]:
    """Every event a read=all user saw in the recordings that the daemon does not use."""
    skip = CHANNEL_EVENTS | {"FullyBooted", "SuccessfulAuth"}
    messages = [m for name in NOISE_RECORDINGS for m in read_recording(RECORDINGS / name)]
    return [WireEvent.of(e) for e in events_only(messages) if e["Event"] not in skip]


class PbxMix:
    """A busy PBX as a read=all AMI user sees it, cycle after cycle, every call unique."""

    def __init__(self) -> None:
        self._scenarios = CallScenarios()
        self._noise = noise_events()
        self._next_noise = 0
        self._callers = 0

    def noise(self, count: int) -> list[WireEvent]:
        chosen = [self._noise[(self._next_noise + i) % len(self._noise)] for i in range(count)]
        self._next_noise += count
        return chosen

    def unknown_caller(self) -> str:
        self._callers += 1
        return f"1{self._callers:010d}"

    def inbound(
        self, caller: str | None = None, agents: Sequence[str] = ("100", "101")
    ) -> SyntheticCall:
        return self._scenarios.inbound(caller or self.unknown_caller(), agents=agents)

    def cycle(self) -> list[WireEvent]:
        calls = [self.inbound()] + [
            self._scenarios.internal(f"{200 + i}", f"{300 + i}") for i in range(INTERNAL_PER_CYCLE)
        ]
        segments = [c.events for c in calls] + [c.hangups for c in calls]
        channel_events = sum(len(s) for s in segments)
        noise = iter(self.noise(CYCLE_EVENTS - channel_events))
        gap = (CYCLE_EVENTS - channel_events) // len(segments)
        out: list[WireEvent] = []
        for segment in segments:
            out.extend(next(noise) for _ in range(gap))
            out.extend(WireEvent.of(e) for e in segment)
        out.extend(noise)
        return out

    def cycles(self, count: int) -> list[WireEvent]:
        return [event for _ in range(count) for event in self.cycle()]


def wire(events: Sequence[WireEvent]) -> bytes:
    return b"".join(e.data for e in events)


def call_bytes(events: Sequence[dict[str, str]]) -> bytes:
    return b"".join(format_message(e) for e in events)


def filtered_for(server: FakeAmiServer, events: Sequence[WireEvent]) -> list[WireEvent]:
    """What the server's last session would receive: its event mask and filters applied."""
    session = server.sessions[-1]
    verdicts: dict[bytes, bool] = {}  # noise repeats byte for byte: judge each text once
    kept = []
    for event in events:
        verdict = verdicts.get(event.data)
        if verdict is None:
            verdict = session.wants(event.classes, event.data.decode())
            verdicts[event.data] = verdict
        if verdict:
            kept.append(event)
    return kept


# ---- the daemon in its own process ------------------------------------------------------------


def daemon_config(
    ami_server: FakeAmiServer, kommo_server: FakeKommo, /, **sections: dict[str, Any]
) -> dict[str, Any]:
    """The daemon's config as a mapping (the child builds it with ``from_mapping``)."""
    data: dict[str, Any] = {
        "ami": {"port": ami_server.port, "username": DEMO_USERNAME, "secret": DEMO_SECRET},
        "kommo": {"base_url": kommo_server.base_url, "access_token": kommo_server.token},
        "log": {"level": "info", "format": "json"},
        "journal": {"database": str(JOURNALS / f"journal-{time.monotonic_ns()}.sqlite3")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


class Child:
    """``child.py`` in a subprocess, driven by one-line commands with JSON answers."""

    def __init__(self, mode: str, config: dict[str, Any]) -> None:
        self._args = [str(HERE / "child.py"), mode, json.dumps(config)]
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Child:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self._args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(self.read(), 30)  # {"ready": ...} once logged in
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        if proc.returncode is None:
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def stop(self) -> float:
        """Ask the daemon to stop (what SIGTERM's handler does: set the stop event); the
        seconds until it said it had stopped."""
        assert self._proc is not None and self._proc.stdin is not None
        started = time.monotonic()
        self._proc.stdin.write(b"stop\n")
        await self._proc.stdin.drain()
        while "stopped" not in await self.read():
            pass
        elapsed = time.monotonic() - started
        await self._proc.wait()
        return elapsed

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark child died; run it alone to see why")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: str) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command.encode() + b"\n")
        await self._proc.stdin.drain()
        return await self.read()


async def wait_until(condition: Any, timeout: float, poll: float = 0.002) -> bool:
    """Poll ``condition()`` until true; False when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


class Pacer:
    """Ticks on an absolute schedule, so a late tick does not slow the rate down."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = time.monotonic()

    async def tick(self) -> None:
        self._next += self._interval
        await asyncio.sleep(max(0.0, self._next - time.monotonic()))


# ---- figures --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    value: str
    target: str = ""
    #: None: a figure without a target.
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return {None: "", True: "pass", False: "FAIL"}[self.passed]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, figure: str, value: str, target: str = "", passed: bool | None = None) -> None:
        self.rows.append(Row(figure, value, target, passed))

    def markdown(self) -> str:
        lines = ["| figure | value | target | result |", "|---|---|---|---|"]
        lines += [f"| {r.figure} | {r.value} | {r.target} | {r.verdict} |" for r in self.rows]
        return "\n".join(lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def spread(values_ms: Sequence[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    p50, p99 = statistics.median(values_ms), percentile(values_ms, 0.99)
    return f"{p50:.2f} / {p99:.2f} / {max(values_ms):.2f} ms"


async def loopback_rtt_ms(url: str, rounds: int = 300) -> list[float]:
    """One small HTTP request and its answer over loopback, aiohttp on both ends."""
    async with aiohttp.ClientSession() as session:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            async with session.get(url) as answer:
                await answer.read()
            times.append((time.perf_counter() - started) * 1000)
    return times[rounds // 10 :]  # the first ones open the connection
