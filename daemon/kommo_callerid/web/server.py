"""The local HTTP endpoint (``[http] listen``): ``/healthz``, ``/metrics``, ``/callerid``.

It knows nothing of the daemon: it is handed a health callable, a metrics page and a name
source, so it can be started and tested on its own. Answers are small and never a 500 for
what a client sent: a dialplan ``CURL()`` or a scraper should always get something usable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from kommo_callerid.core.config import HttpConfig
from kommo_callerid.serving.descriptors import listener_limits
from kommo_callerid.serving.guard import ConnectionGuard, ConnectionLimits
from kommo_callerid.serving.listener import GuardedListener

log = structlog.get_logger(__name__)

#: A query string longer than a phone number by far is not one; answer without parsing it.
MAX_NUMBER_CHARS = 64
#: Every local client (the dialplan's CURL(), a scraper, a probe) has one address, loopback:
#: the per-client cap is the listener's.
LOCAL_LIMITS = ConnectionLimits(max_connections=256, max_per_client=256)


@dataclass(frozen=True, slots=True)
class Health:
    ami_connected: bool
    #: Small facts for a human or a probe: uptime, version, last event age.
    facts: Mapping[str, Any]
    #: Whether notifications can go out: "ok", or what stops them ("unauthorised",
    #: "token_unreadable", "blocked", "backlog").
    kommo: str = "ok"
    #: The call journal's database: "ok", or "unusable" (it cannot be opened or written;
    #: caller ID goes on, finished calls wait in memory).
    journal: str = "ok"

    @property
    def healthy(self) -> bool:
        return self.ami_connected and self.kommo == "ok" and self.journal == "ok"


class MetricsPage(Protocol):
    content_type: str

    def render(self) -> bytes: ...


class NameSource(Protocol):
    async def name_for(self, raw: str) -> str: ...


class HttpServer:
    """``await start()`` binds (port 0 picks one: see ``port``), ``await stop()`` closes."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        health: Callable[[], Health],
        metrics: MetricsPage,
        callerid: NameSource,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._host, self._requested_port = config.address
        self._health = health
        self._metrics = metrics
        self._callerid = callerid
        #: Bounded connections and request deadlines (serving.guard); by default within this
        #: listener's share of the descriptors, so AMI and Kommo always get one.
        self.limits = limits or listener_limits(LOCAL_LIMITS)
        self._listener: GuardedListener | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)  # HEAD: uptime probes
        app.router.add_get("/metrics", self._metrics_page, allow_head=False)
        app.router.add_get("/callerid", self._callerid_name, allow_head=False)
        listener = GuardedListener(self._host, self._requested_port, self.limits, name="http")
        await listener.start(app)
        self._listener = listener
        self.port = listener.port
        log.info(
            "http.listening",
            host=self._host,
            port=self.port,
            max_connections=self.limits.max_connections,
        )

    @property
    def guard(self) -> ConnectionGuard | None:
        """The listener's connection table (its counters go on ``/metrics``)."""
        return self._listener.guard if self._listener is not None else None

    @property
    def connections(self) -> int:
        """Connections open now (a test's and a debugger's view of the guard)."""
        return self._listener.guard.open if self._listener is not None else 0

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self._health()
        state = "connected" if health.ami_connected else "disconnected"
        body = {"ami": state, "kommo": health.kommo, "journal": health.journal, **health.facts}
        return web.Response(
            text=json.dumps(body),
            status=200 if health.healthy else 503,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": self._metrics.content_type}
        )

    async def _callerid_name(self, request: web.Request) -> web.Response:
        raw = request.query.get("number", "")
        name = ""
        try:
            if len(raw) <= MAX_NUMBER_CHARS:
                name = await self._callerid.name_for(raw)
        except Exception:  # the dialplan gets an empty name, never a 500
            log.exception("http.callerid_failed")
        return web.Response(text=name, content_type="text/plain", charset="utf-8")
