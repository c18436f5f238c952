"""A caller name with terminal escapes, through the fake AMI and the real daemon, into the
console renderer: escaped and capped, the terminal untouched."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.logging import configure_logging
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import make_config, running_daemon, wait_for

HOSTILE = "\x1b[2J\x1b[H\x1b]0;pwned\x07" + "Mallory " * 40


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as server:
        yield server


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    stream = io.StringIO()
    configure_logging(LogConfig(format="console"), stream=stream)
    yield stream
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


async def test_an_escape_laden_caller_name_is_escaped_on_the_console(
    ami: FakeAmiServer, kommo: FakeKommo, console: io.StringIO
) -> None:
    call = CallScenarios().inbound("18305803077", caller_name=HOSTILE, agents=())
    async with running_daemon(make_config(ami, kommo)):
        await ami.play(call.events)
        await wait_for(lambda: "call.incoming" in console.getvalue())
    out = console.getvalue()
    assert "\x1b[2J" not in out and "\x1b]0;" not in out and "\x07" not in out
    assert "\\x1b[2J" in out
    [line] = [line for line in out.splitlines() if "call.incoming" in line]
    assert "Mallory " * 12 not in line  # capped at 80 characters
