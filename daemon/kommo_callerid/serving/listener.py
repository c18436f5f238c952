"""An aiohttp app served behind a :class:`~.guard.ConnectionGuard`, in plain HTTP or TLS.

Both the local endpoint (``web``, listener ``http``) and the public one (listener ``public``,
TLS unless on loopback) are one of these; their caps come from the descriptor budget
(:func:`.descriptors.listener_limits`). This sits below them in the import layers and
imports no room.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kommo_callerid.serving.guard import ConnectionGuard, ConnectionLimits
from kommo_callerid.serving.protocol import GuardedProtocol, TlsSource


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a :class:`ConnectionGuard`; with
    ``tls``, each one's handshake uses the context ``tls()`` gives at its accept."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        tls: TlsSource | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(runner, host, port, **kw)
        self.guard = guard
        self._tls = tls

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        guard, tls = self.guard, self._tls
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(guard, server(), tls),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()
        await self.guard.close()


@dataclass
class GuardedListener:
    """An aiohttp app served on ``host:port`` behind a :class:`ConnectionGuard`.

    ``await start(app)`` puts the guard's middleware first and binds (port 0 picks one: see
    ``port``); ``await stop()`` closes the socket, then every connection. ``tls``: the TLS
    context for the next accepted connection (None: plain HTTP).
    """

    host: str
    port: int
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    name: str = "http"
    runner_options: dict[str, Any] = field(default_factory=dict)
    tls: TlsSource | None = None
    guard: ConnectionGuard = field(init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.guard = ConnectionGuard(self.limits, name=self.name)

    async def start(self, app: web.Application) -> None:
        app.middlewares.insert(0, self.guard.middleware)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # aiohttp's own idle timer, never later than the guard's
            keepalive_timeout=self.limits.idle_timeout,
            logger=self.guard.client_error_log(),
            **{"shutdown_timeout": 1.0, **self.runner_options},
        )
        await runner.setup()
        site = GuardedSite(runner, self.host, self.port, self.guard, self.tls)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
