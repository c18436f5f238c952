"""A daemon killed mid-burst (SIGKILL, a real process): the other one carries its calls."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from cluster_helpers import DID, DID_USER, UniqueCalls, cluster_config, notified_per_caller
from redis_server import RedisServer

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import ROOT, running_daemon, wait_for


def _config_file(path: Path, ami: FakeAmiServer, kommo: FakeKommo, redis_url: str) -> Path:
    path.write_text(
        f"""
[ami]
port = {ami.port}
username = "{DEMO_USERNAME}"
secret = "{DEMO_SECRET}"
reconnect_min = 0.05
reconnect_max = 0.2
[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"
[notify]
to = ["did", "responsible"]
[notify.dids]
"{DID}" = [{DID_USER}]
[cluster]
redis_url = "{redis_url}"
node = "doomed"
[journal]
database = "{path.parent / "journal.sqlite3"}"
[log]
format = "json"
""",
        encoding="utf-8",
    )
    return path


async def test_sigkill_one_daemon_mid_burst_no_call_lost(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeKommo(rate_limit=7) as kommo:
        config_path = _config_file(tmp_path / "config.toml", ami, kommo, redis_server.url)
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kommo_callerid",
            "run",
            "-c",
            str(config_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            await ami.wait_logged_in(count=1, timeout=20)
            config = cluster_config(ami, kommo, redis_server.url, "survivor")
            async with running_daemon(config):
                await ami.wait_logged_in(count=2)
                source = UniqueCalls()
                calls = [source.next() for _ in range(100)]
                for index, call in enumerate(calls):
                    await ami.play(call.events)
                    if index == 50:
                        doomed.send_signal(signal.SIGKILL)
                        killed_at = asyncio.get_running_loop().time()
                    await asyncio.sleep(0.02)
                await wait_for(lambda: len(notified_per_caller(kommo)) == 100, timeout=30)
        finally:
            if doomed.returncode is None:
                doomed.kill()
            await doomed.wait()
    per_caller = notified_per_caller(kommo)
    assert len(per_caller) == 100  # no call lost
    twice = {number for number, count in per_caller.items() if count > 1}
    print(f"after SIGKILL: {len(twice)} calls notified twice (taken over mid-notification)")
    # A call is notified twice only when its owner died between Kommo accepting the request
    # and noting the delivery in Redis: the request in flight at the kill (one batch).
    first = {}
    for event in kommo.events:
        first.setdefault(event.phone_number, event.received_at)
    assert all(killed_at - 1.0 < first[number] < killed_at + 0.5 for number in twice)
    assert len(twice) <= 50  # at most one batch
    assert kommo.violations == 0
