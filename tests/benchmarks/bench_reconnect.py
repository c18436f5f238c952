"""Reconnect after drops (issue 13, point 16): a PBX that drops a working link every 3-5 s
(reloads, a flaky network), ten times. The AMI supervisor runs with the defaults
(``reconnect_min`` 0.5 s, ``reconnect_max`` 30 s) in this process against the fake AMI server.

Reported: the time from each drop to the next successful login (target: ``reconnect_min`` plus
the login, since every session worked for seconds).
"""

from __future__ import annotations

import asyncio
import random
import time

from common import Report, spread

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.supervisor import AmiSupervisor
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import ChannelEvent
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer

DROPS = 10


async def run(report: Report, quick: bool) -> None:
    drops = 3 if quick else DROPS
    rng = random.Random(13)
    async with FakeAmiServer() as ami:
        config = AmiConfig.model_validate(
            {"port": ami.port, "username": DEMO_USERNAME, "secret": DEMO_SECRET}
        )
        queue: asyncio.Queue[ChannelEvent] = asyncio.Queue()
        supervisor = AmiSupervisor(config, lambda: AmiClient(config, queue))
        task = asyncio.create_task(supervisor.run())
        gaps: list[float] = []
        try:
            for drop in range(1, drops + 1):
                await ami.wait_logged_in(drop, timeout=60)
                await asyncio.sleep(rng.uniform(3, 5))
                dropped_at = time.monotonic()
                ami.drop()
                await ami.wait_logged_in(drop + 1, timeout=60)
                gaps.append(time.monotonic() - dropped_at)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    worst = max(gaps)
    report.add(
        f"reconnect after {drops} drops 3-5 s apart: p50 / p99 / max",
        spread([gap * 1000 for gap in gaps]),
        "worst ≤ 1 s",
        worst <= 1.0,
    )
