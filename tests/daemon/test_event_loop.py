"""The daemon process's loop: uvloop when it imports, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from kommo_callerid.daemon import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_without_uvloop_the_daemon_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    assert event_loop.loop_factory() is None
    assert event_loop.run(_loop_module()).startswith("asyncio")


def test_with_uvloop_installed_the_daemon_runs_on_it() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.loop_factory() is not None
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_run_returns_the_coroutines_result_and_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def answer() -> int:
        loops.append(asyncio.get_running_loop())
        return 42

    assert event_loop.run(answer()) == 42
    assert loops[0].is_closed()
