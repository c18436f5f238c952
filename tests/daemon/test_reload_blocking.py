"""A reload that would block (issue 18, point 12): a FIFO at the config path stopped every
later SIGHUP, and SIGTERM never finished. Only a regular file is read, the read is bounded,
and the daemon stops within ``shutdown_timeout`` whatever the reload is doing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_reload import Lines, config_text

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import ConfigError, from_mapping, load_config
from kommo_callerid.daemon.reload import ConfigReloader
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset

from support import wait_for

SHUTDOWN_TIMEOUT = 1.0
#: What a stopping interpreter may add to shutdown_timeout on a loaded machine.
EXIT_SLACK = 4.0


async def test_a_fifo_at_the_config_path_fails_the_reload_and_the_daemon_still_stops(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    async with FakeAmiServer() as ami, FakeKommo(demo_dataset()) as kommo:
        text = config_text(
            ami.port, kommo, extra=f"[daemon]\nshutdown_timeout = {SHUTDOWN_TIMEOUT}"
        )
        path.write_text(text)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KOMMO_CALLERID_CONFIG", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kommo_callerid", "run", "-c", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        try:
            await lines.until("ami.connected")
            path.unlink()
            os.mkfifo(path)  # nobody ever writes to it
            for _ in range(2):  # the second SIGHUP is served too
                proc.send_signal(signal.SIGHUP)
                failed = await lines.until("config.reload_failed", timeout=15)
                assert "not a regular file" in failed["reason"]
            path.unlink()
            path.write_text(text.replace('fallback = "none"', 'fallback = "all"'))
            proc.send_signal(signal.SIGHUP)
            assert (await lines.until("config.reloaded"))["changed"] == ["notify.fallback"]

            path.unlink()
            os.mkfifo(path)
            proc.send_signal(signal.SIGHUP)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT + EXIT_SLACK)
            stopped_in = time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0
    assert stopped_in < SHUTDOWN_TIMEOUT + EXIT_SLACK


def test_only_a_regular_file_of_sane_size_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)  # returns at once: no writer is waited for
    with pytest.raises(ConfigError, match="cannot be read: Is a directory"):
        load_config(tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(big)


async def test_a_read_that_hangs_is_given_up_and_no_second_one_piles_up(tmp_path: Path) -> None:
    """A hung file system (the read itself blocks): the reload fails after its bound, the
    next SIGHUP says the first read is still hanging, and nothing waits for the thread."""
    running = from_mapping(
        {"ami": {"secret": "s"}, "kommo": {"base_url": "https://a.kommo.com", "access_token": "t"}}
    )
    release = threading.Event()
    reads: list[Path] = []

    def hanging_load(path: Path) -> Config:
        reads.append(path)
        release.wait(30)
        return running

    applied: list[Config] = []
    reloader = ConfigReloader(
        tmp_path / "config.toml", lambda: running, applied.append,
        load=hanging_load, read_timeout=0.2,
    )  # fmt: skip
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            await reloader.reload_once()
            first = time.monotonic() - started
            await reloader.reload_once()
        assert first < 5
        reasons = [line["reason"] for line in logs if line["event"] == "config.reload_failed"]
        assert "took longer than 0.2 s" in reasons[0]
        assert "has not returned yet" in reasons[1]
        assert len(reads) == 1 and applied == []
        hung = [t for t in threading.enumerate() if t.name == "config-reload"]
        assert hung and all(t.daemon for t in hung)  # never joined at exit
    finally:
        release.set()


async def test_a_stop_that_meets_a_finishing_read_is_not_swallowed(tmp_path: Path) -> None:
    """SIGHUP then SIGTERM at once: the read ends just as the reloader is cancelled. The
    cancellation must win (with 3.11's wait_for it was swallowed: the reloader went back to
    waiting for SIGHUP and the shutdown waited for it for ever; 7 stops in 12 hung)."""
    running = from_mapping(
        {"ami": {"secret": "s"}, "kommo": {"base_url": "https://a.kommo.com", "access_token": "t"}}
    )
    entered, release = threading.Event(), threading.Event()

    def load(path: Path) -> Config:
        entered.set()
        release.wait(5)
        return running

    reloader = ConfigReloader(tmp_path / "config.toml", lambda: running, lambda _: None, load=load)
    requested = asyncio.Event()
    requested.set()
    task = asyncio.create_task(reloader.run(requested))
    await wait_for(entered.is_set)
    release.set()
    for thread in threading.enumerate():
        if thread.name == "config-reload":
            thread.join(5)  # its answer is queued on the loop before the cancellation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
