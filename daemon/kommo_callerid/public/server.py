"""The public listener (``[public] listen``): only the routes the wiring registers, CORS for
the allowed origins, TLS unless on loopback, bounded like every listener of the daemon
(``serving/``: connection caps in all and per client within its descriptor share, the TLS
handshake and the whole request within ``request_timeout`` of the accept, idle and stalled
connections closed; the TLS context is looked up per accepted connection, so a certificate
re-read on SIGHUP serves the next one).

Routes are added by whoever owns them (:meth:`PublicServer.add_route`, before ``start``):
click-to-call's ``/kommo/*`` (:mod:`.kommo_routes`), later the recordings. Everything
else is 404. Each route answers its CORS preflight (``OPTIONS``) for an allowed ``Origin``
only — exact match: the account's origin (``kommo.base_url``) and ``[public] origins`` — with
``X-Auth-Token`` and ``Content-Type`` allowed, and ``Access-Control-Allow-Private-Network``
when Chrome asks (a public page calling a LAN address). A request whose ``Origin`` is not
allowed is refused (403) before its handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from functools import partial

import structlog
from aiohttp import web

from kommo_callerid.core.config import PublicConfig
from kommo_callerid.public.tls import ReloadableTls, TlsFiles
from kommo_callerid.serving.descriptors import listener_limits
from kommo_callerid.serving.guard import ConnectionGuard, ConnectionLimits
from kommo_callerid.serving.listener import GuardedListener

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOWED_HEADERS = "X-Auth-Token, Content-Type"
PREFLIGHT_MAX_AGE = "600"
#: A listener facing the internet: an office behind one NAT address shares ``max_per_client``.
PUBLIC_LIMITS = ConnectionLimits(max_connections=256, max_per_client=64)
#: Bytes of a request body (a click is ``{"phone": "..."}``).
MAX_BODY = 4096
#: aiohttp's own request-head bounds (its defaults are 8 KiB a line, 32 KiB a field).
HEAD_BOUNDS = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 64}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Server": "kommo-callerid",
}


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    path: str
    handler: Handler


class PublicServer:
    """``add_route`` ..., ``await start()`` (port 0 picks one: ``port``), ``await stop()``."""

    def __init__(
        self,
        config: PublicConfig,
        origins: Callable[[], Collection[str]],
        *,
        limits: ConnectionLimits | None = None,
    ) -> None:
        """``origins``: the allowed ``Origin`` values now (they follow a reload)."""
        self._config = config
        self._origins = origins
        self.limits = limits or listener_limits(PUBLIC_LIMITS)
        self._routes: list[_Route] = []
        self.tls = ReloadableTls(TlsFiles(config.tls_cert, config.tls_key)) if config.tls else None
        self._listener: GuardedListener | None = None
        self.port: int | None = None

    @property
    def guard(self) -> ConnectionGuard | None:
        """The listener's connection table (its counters go on ``/metrics``)."""
        return self._listener.guard if self._listener is not None else None

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        if self._listener is not None:
            raise RuntimeError("routes are added before start()")
        self._routes.append(_Route(method.upper(), path, handler))

    def reconfigure(self, config: PublicConfig) -> None:
        """SIGHUP: the TLS files are read again (a renewed certificate); ``listen`` stays."""
        self._config = config
        if self.tls is not None and config.tls:
            self.tls.reload(TlsFiles(config.tls_cert, config.tls_key))

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._cors])
        app.on_response_prepare.append(_harden)
        # A handler that streams (a recording) prepares its response itself, before the
        # middleware sees it: CORS goes on every response as it is prepared.
        app.on_response_prepare.append(self._cors_headers)
        methods: dict[str, list[str]] = {}
        for route in self._routes:
            methods.setdefault(route.path, []).append(route.method)
        for path, allowed in methods.items():
            app.router.add_route("OPTIONS", path, partial(self._preflight, sorted(allowed)))
        for route in self._routes:
            app.router.add_route(route.method, route.path, route.handler)
        tls = self.tls
        host, port = self._config.address
        listener = GuardedListener(
            host,
            port,
            self.limits,
            name="public",
            runner_options=dict(HEAD_BOUNDS),
            tls=(lambda: tls.context) if tls is not None else None,
        )
        await listener.start(app)
        self._listener = listener
        self.port = listener.port
        log.info(
            "public.listening",
            host=host,
            port=self.port,
            tls=tls is not None,
            max_connections=self.limits.max_connections,
        )

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def _allowed(self, origin: str) -> bool:
        return origin in self._origins()

    async def _preflight(self, methods: list[str], request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        asked = request.headers.get("Access-Control-Request-Method", "").upper()
        if not self._allowed(origin) or asked not in methods:
            return web.Response(status=403)
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        }
        if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" or origin is None:
            return await handler(request)  # a preflight, or no browser cross-origin call
        if not self._allowed(origin):
            return web.json_response({"error": "origin"}, status=403)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405, 413: the page may read those too
            _allow(exc.headers, origin)
            raise
        _allow(response.headers, origin)
        return response

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and request.method != "OPTIONS" and self._allowed(origin):
            _allow(response.headers, origin)


def _allow(headers: MutableMapping[str, str], origin: str) -> None:
    headers["Access-Control-Allow-Origin"] = origin
    headers["Vary"] = "Origin"


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
