"""``kommo-callerid demo``: the real daemon between an embedded AMI simulator and an embedded
Kommo simulator, both on loopback with real sockets and the real protocols.

It places N inbound calls (plus one anonymous and one internal call, which are skipped) and
exits 0 when every inbound call was notified. By default it tells the story one line per call
(:mod:`.demo_view`) and ends with a summary table; ``--json`` prints the daemon's raw log.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from kommo_callerid.commands.demo_view import DemoView
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.core.logging import configure_logging
from kommo_callerid.daemon.app import EXIT_FAILURE, EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

#: Callers the demo dataset knows (contact, lead, company, customer, lead without a name)
#: and one it does not.
DEMO_CALLERS = (
    ("18305803077", "John Doe"),
    ("14155550199", "Maria Garcia"),
    ("12125550142", "Acme Logistics"),
    ("442079460958", "Wei Chen"),
    ("13125550100", "Unknown Caller"),
    ("16465550123", "Sam Patel"),
)
AGENT_USERS = {"100": 8375357}  # extension 100 rings user 8375357; 101 is not mapped
CALL_SPACING = 0.3
SETTLE_TIMEOUT = 10.0


def demo_config(
    ami_port: int, kommo_url: str, kommo_token: str, *, journal: str, raw: bool = False
) -> dict[str, Any]:
    return {
        "ami": {
            "port": ami_port,
            "username": DEMO_USERNAME,
            "secret": DEMO_SECRET,
            "reconnect_min": 0.2,
            "reconnect_max": 2.0,
        },
        "kommo": {"base_url": kommo_url, "access_token": kommo_token},
        "notify": {"extensions": AGENT_USERS, "fallback_after": 1.0},
        "log": {"format": "json" if raw else "auto"},
        "daemon": {"shutdown_timeout": 2.0},
        "journal": {"database": journal, "unknown": "unsorted"},
        "phonebook": {"enabled": True, "database": str(Path(journal).with_name("phonebook.db"))},
    }


def demo_calls(count: int) -> list[SyntheticCall]:
    scenarios = CallScenarios()
    callers = itertools.islice(itertools.cycle(DEMO_CALLERS), count)
    calls = [
        scenarios.inbound(number, caller_name=name, agents=("100", "101"))
        for number, name in callers
    ]
    # Two calls the daemon must skip: a withheld number and an internal call.
    calls.insert(min(2, len(calls)), scenarios.anonymous())
    calls.insert(min(4, len(calls)), scenarios.internal("101", "102"))
    return calls


def intro(calls: list[SyntheticCall]) -> str:
    """The first line: as many calls as lines follow, and what each kind of line says."""
    inbound = sum(_is_caller(call) for call in calls)
    others = len(calls) - inbound
    return (
        "kommo-callerid demo: the real daemon between an Asterisk AMI simulator and a Kommo "
        f"simulator on loopback; {len(calls)} calls: {inbound} inbound and {others} the "
        "daemon must skip (one withheld number, one internal call). One line per call: "
        "caller → what Kommo knows → who was notified; when the calls end, what the call "
        "journal logged."
    )


def _is_caller(call: SyntheticCall) -> bool:
    """An inbound call from a number the daemon should notify about."""
    return call.kind == "inbound" and call.caller_num.isdigit()


async def _wait_for(condition: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _install_view(view: DemoView) -> None:
    """The view reads every event just before the renderer, and drops it."""
    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[*processors[:-1], view, processors[-1]])


async def _demo(count: int, raw: bool) -> int:
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        journal = Path(tempfile.mkdtemp(prefix="kommo-callerid-demo-")) / "journal.sqlite3"
        settings = demo_config(ami.port, kommo.base_url, kommo.token, journal=str(journal), raw=raw)
        config = from_mapping(settings)
        configure_logging(config.log, secrets=[DEMO_SECRET, kommo.token])
        view = None if raw else DemoView(sys.stdout)
        calls = demo_calls(count)
        if view is not None:
            _install_view(view)
            view.say(intro(calls))
        daemon = Daemon(config)
        serving = asyncio.create_task(daemon.serve(), name="demo-daemon")
        await _wait_for(lambda: daemon.ami_connected and daemon.phonebook_ready, SETTLE_TIMEOUT)
        for call in calls:
            await ami.play(call.events)
            await asyncio.sleep(CALL_SPACING)
        numbers = {call.caller_num for call in calls if _is_caller(call)}
        notified = lambda: {e.phone_number.lstrip("+") for e in kommo.events} >= numbers  # noqa: E731
        all_notified = await _wait_for(notified, SETTLE_TIMEOUT)
        for call in calls:
            await ami.play(call.hangups)
        await asyncio.sleep(CALL_SPACING)  # the calls end; then their journal records go out
        await _wait_for(_journal_idle(daemon), SETTLE_TIMEOUT)
        daemon.stop.set()
        exit_code = await serving
        inbound = sum(_is_caller(call) for call in calls)
        if view is not None:
            view.finish()
        else:
            print(
                f"\ndemo: {inbound} inbound calls placed ({len(calls) - inbound} more to skip); "
                f"the Kommo simulator received {len(kommo.events)} notifications for "
                f"{len({e.phone_number for e in kommo.events})} callers; "
                f"the call journal: {len(kommo.journal.calls)} calls in Kommo's timelines, "
                f"{len(kommo.journal.unsorted)} incoming leads",
                file=sys.stdout,
            )
        shutil.rmtree(journal.parent, ignore_errors=True)
    if exit_code == EXIT_OK and not all_notified:
        return EXIT_FAILURE
    return exit_code


def _journal_idle(daemon: Daemon) -> Callable[[], bool]:
    """Every finished call written to the outbox and accepted by Kommo."""

    def idle() -> bool:
        sizes = daemon.table_sizes()
        return not sizes.get("journal_pending") and not sizes.get("journal_unwritten")

    return idle


def run_demo(calls: int = 5, *, raw: bool = False) -> int:
    """``raw``: the daemon's JSON log lines instead of the story."""
    return asyncio.run(_demo(max(0, calls), raw))
