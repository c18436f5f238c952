"""SIGHUP re-reads the configuration: live sections change without dropping the AMI link,
the rest is reported as restart_needed, a bad file as reload_failed (the running one stays)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.daemon.reload import plan_reload
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import temp_journal, wait_for

UNKNOWN = "13125550100"  # nobody in the demo dataset: only the DID users can be notified
#: The call journal's database (on by default; its default path is under /var/lib).
JOURNAL = temp_journal()


def config_text(
    ami_port: int, kommo: FakeKommo, *, notify: str = "", extra: str = "", fmt: str = "json"
) -> str:
    return f"""
[ami]
port = {ami_port}
username = "{DEMO_USERNAME}"
secret = "{DEMO_SECRET}"
reconnect_min = 0.05
reconnect_max = 0.2

[kommo]
base_url = "{kommo.base_url}"
access_token = "{kommo.token}"

[notify]
to = ["did"]
fallback = "none"
{notify}

[journal]
database = "{JOURNAL}"

[log]
format = "{fmt}"
{extra}
"""


class Lines:
    """The daemon's stdout, one JSON object per line, read as it comes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.seen: list[dict[str, Any]] = []

    async def until(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                raw = await self._stream.readline()
                if not raw:
                    raise AssertionError(f"stdout closed before {event}")
                line: dict[str, Any] = json.loads(raw)
                self.seen.append(line)
                if line["event"] == event:
                    return line


async def test_sighup_reloads_reports_and_keeps_the_link(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    scenarios = CallScenarios()
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        path.write_text(config_text(ami.port, kommo))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KOMMO_CALLERID_CONFIG", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kommo_callerid", "run", "-c", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        await lines.until("ami.connected")

        # 1. a live change: the DID now has users, calls arrive in a new context, debug level
        dids = '[notify.dids]\n"5551000" = [7, 8]\n[calls]\ninbound_contexts = ["from-new"]'
        path.write_text(config_text(ami.port, kommo, notify=dids, extra='level = "debug"'))
        proc.send_signal(signal.SIGHUP)
        reloaded = await lines.until("config.reloaded")
        assert sorted(reloaded["changed"]) == ["calls.inbound_contexts", "log.level", "notify.dids"]
        scenarios = CallScenarios(inbound_context="from-new")
        await ami.play(scenarios.inbound(UNKNOWN, did="5551000", agents=()).events)
        await wait_for(lambda: len(kommo.events) == 1, 10)
        assert kommo.events[0].users == (7, 8)

        # 2. a broken file: reported, the running configuration stays
        path.write_text("[ami\n")
        proc.send_signal(signal.SIGHUP)
        failed = await lines.until("config.reload_failed")
        assert "not valid TOML" in failed["reason"] and failed["level"] == "error"

        # 3. keys that need a restart: named, not applied
        text = config_text(ami.port + 1, kommo, notify=dids, fmt="console")
        path.write_text(text.replace("reconnect_max = 0.2", "reconnect_max = 0.3"))
        proc.send_signal(signal.SIGHUP)
        restart = await lines.until("config.restart_needed")
        assert sorted(restart["keys"]) == ["ami.port", "ami.reconnect_max", "log.format"]
        assert (await lines.until("config.reloaded"))["changed"] == ["log.level"]
        await ami.play(scenarios.inbound(UNKNOWN, did="5551000", agents=()).events)
        await wait_for(lambda: len(kommo.events) == 2, 10)

        proc.send_signal(signal.SIGTERM)
        await lines.until("daemon.stopped")
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
        assert ami.logins == 1  # never dropped the link
    assert all(line["event"] != "ami.disconnected" for line in lines.seen)


def test_the_plan_keeps_the_running_value_of_every_fixed_key() -> None:
    base: dict[str, Any] = {
        "ami": {"secret": "s"},
        "kommo": {"base_url": "https://acme.kommo.com", "access_token": "t"},
    }
    old = from_mapping(base)
    new = from_mapping(
        {
            **base,
            "kommo": {**base["kommo"], "timeout": 3.0},
            "journal": {"enabled": False, "database": "/tmp/elsewhere.sqlite3"},
            "log": {"mask_numbers": True, "format": "console"},
            "cache": {"ttl": 10.0},
            "daemon": {"shutdown_timeout": 1.0},
        }
    )
    plan = plan_reload(old, new)
    assert sorted(plan.applied) == [
        "daemon.shutdown_timeout",
        "journal.enabled",
        "log.mask_numbers",
    ]
    assert sorted(plan.restart_needed) == [
        "cache.ttl",
        "journal.database",
        "kommo.timeout",
        "log.format",
    ]
    running = plan.config
    assert running.kommo == old.kommo and running.cache == old.cache
    assert running.journal.enabled is False and running.journal.database == old.journal.database
    assert running.log.mask_numbers is True and running.log.format == old.log.format
    assert running.daemon.shutdown_timeout == 1.0
    assert plan_reload(old, old).applied == () and plan_reload(old, old).restart_needed == ()
