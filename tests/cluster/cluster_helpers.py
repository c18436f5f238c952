"""What the cluster tests share: a daemon config on the cluster, calls with unique callers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kommo_callerid.core.config import Config
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo
from kommo_callerid.sim.scenarios import CallScenarios, SyntheticCall

from support import make_config

DID = "5551000"
DID_USER = 7


def cluster_config(
    ami: FakeAmiServer,
    kommo: FakeKommo,
    redis_url: str,
    node: str,
    /,
    nodes: int = 2,
    **sections: dict[str, Any],
) -> Config:
    return make_config(
        ami,
        kommo,
        cluster={"redis_url": redis_url, "node": node, "expected_nodes": nodes},
        notify={"dids": {DID: [DID_USER]}, "to": ["did", "responsible"]},
        **sections,
    )


class UniqueCalls:
    """Inbound calls, each from a caller of its own; ``pbx`` keeps Linkedids apart per PBX."""

    def __init__(self, pbx: int = 0) -> None:
        self._scenarios = CallScenarios(epoch=1_700_000_000 + pbx * 10_000_000)
        self._prefix = 1830 + pbx
        self._count = 0

    def next(self) -> SyntheticCall:
        self._count += 1
        return self._scenarios.inbound(f"{self._prefix}{self._count:07d}", did=DID)


def notified_per_caller(kommo: FakeKommo) -> Counter[str]:
    return Counter(event.phone_number for event in kommo.events)


def most_in_any_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
