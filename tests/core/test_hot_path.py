"""The hot path: calls between their lookup and their notification, which background work
(the journal's bookkeeping) lets pass, never for long."""

from __future__ import annotations

import asyncio
import contextlib

from kommo_callerid.core.hot_path import HotPath


async def test_with_no_call_in_flight_quiet_only_gives_the_loop_a_turn() -> None:
    hot_path = HotPath()
    turns: list[str] = []
    asyncio.get_running_loop().call_soon(turns.append, "what was ready")
    await hot_path.quiet()
    assert turns == ["what was ready"]


async def test_quiet_waits_until_the_calls_in_flight_are_through() -> None:
    hot_path = HotPath(longest_wait=5.0)
    through = asyncio.Event()

    async def call() -> None:
        with hot_path.call():
            await through.wait()

    calls = [asyncio.create_task(call()) for _ in range(2)]
    await asyncio.sleep(0)
    assert hot_path.busy
    waiting = asyncio.create_task(hot_path.quiet())
    await asyncio.sleep(0.02)
    assert not waiting.done()
    through.set()
    await asyncio.wait_for(waiting, 1)
    assert not hot_path.busy
    await asyncio.gather(*calls)


async def test_a_call_that_never_gets_through_holds_background_work_back_briefly() -> None:
    hot_path = HotPath(longest_wait=0.01)
    with hot_path.call():
        await asyncio.wait_for(hot_path.quiet(), 1)
        assert hot_path.busy


async def test_a_call_that_fails_leaves_the_hot_path() -> None:
    hot_path = HotPath()
    with contextlib.suppress(RuntimeError), hot_path.call():
        raise RuntimeError("the lookup failed")
    assert not hot_path.busy
    await asyncio.wait_for(hot_path.quiet(), 1)
