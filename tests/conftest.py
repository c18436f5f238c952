"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kommo_callerid.sim.ami_server import FakeAmiServer


@pytest.fixture
async def ami() -> AsyncIterator[FakeAmiServer]:
    """The fake AMI server on loopback, with the demo user."""
    async with FakeAmiServer() as server:
        yield server
