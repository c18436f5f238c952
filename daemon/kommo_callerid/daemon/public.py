"""Wiring of the public endpoint (``[public]``) and click-to-call (``[clicktocall]``).

Kept apart from :mod:`.app` so the lifecycle reads the same without them. What it joins: the
listener (``public/``), the click rules (``clicktocall/``), the Originate port implemented by
``ami/`` over the PBX links, Kommo (the account at start-up, names for the caller ID), the
call journal's mark (``calls/``) and, with ``[cluster]``, the shared jti guard.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import structlog
from aiohttp import web

from kommo_callerid.calls.outcome_verdict import Click
from kommo_callerid.calls.pbx_calls import PbxOutcomeTrackers
from kommo_callerid.clicktocall.replay import MemoryReplayGuard
from kommo_callerid.clicktocall.service import ClickToCall
from kommo_callerid.clicktocall.tokens import LEEWAY, TokenVerifier
from kommo_callerid.cluster.replay import SharedReplayGuard
from kommo_callerid.core.config import Config, HttpConfig, origin_of
from kommo_callerid.core.models import KommoError
from kommo_callerid.core.originate import OriginateRequest
from kommo_callerid.daemon.links import PbxLinks
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.public import kommo_routes
from kommo_callerid.public.server import PublicServer
from kommo_callerid.public.tls import TlsError
from kommo_callerid.web.callerid import CallerIdService

log = structlog.get_logger(__name__)

#: Seconds a click waits for the Kommo name shown on the user's phone (else the number).
NAME_BUDGET = 0.3
#: ``GET /api/v4/account`` retries: capped, jittered, doubling.
ACCOUNT_RETRY_MIN = 1.0
ACCOUNT_RETRY_MAX = 60.0
#: Seconds a click's mark waits for its first channel (the Originate's ring time + margin).
CLICK_MARK_MARGIN = 60.0


class _Guard:
    """Local jti memory always; with ``[cluster]``, Redis decides while it is reachable."""

    def __init__(self, local: MemoryReplayGuard, shared: SharedReplayGuard | None) -> None:
        self._local = local
        self._shared = shared

    async def first_use(self, jti: str, expires_at: float) -> bool:
        first_here = self._local.remember(jti, expires_at)
        if self._shared is not None:
            shared = await self._shared.first_use(jti, expires_at)
            if shared is not None:
                return shared and first_here
        return first_here


class PublicEndpoint:
    def __init__(
        self,
        config: Config,
        kommo: KommoClient,
        links: PbxLinks,
        outcomes: PbxOutcomeTrackers,
        shared_jtis: SharedReplayGuard | None = None,
        *,
        extra_routes: Sequence[web.RouteDef] = (),
    ) -> None:
        """``extra_routes``: more routes on the same listener (the recordings' GET, HEAD too)."""
        self._config = config
        self._kommo = kommo
        self._outcomes = outcomes
        self.names = CallerIdService(
            kommo, config.calls, HttpConfig(callerid_timeout=NAME_BUDGET, callerid_max_length=40)
        )
        guard = _Guard(MemoryReplayGuard(time.time, keep_after=LEEWAY), shared_jtis)
        self.clicks = ClickToCall(
            config.clicktocall,
            config.notify,
            [pbx.name for pbx in config.pbxs],
            verifier=TokenVerifier(
                config.kommo.client_id, config.kommo.client_secret.get_secret_value()
            ),
            replay=guard,
            originator=links.originator(),
            names=self.names,
            clock=time.monotonic,
            on_originate=self._mark,
        )
        self.server = PublicServer(config.public, self._origins)
        kommo_routes.register(self.server, self.clicks)
        for route in extra_routes:
            self.server.add_route(route.method, route.path, route.handler)
            if route.method == "GET":
                self.server.add_route("HEAD", route.path, route.handler)
        self._account_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int | None:
        return self.server.port

    async def start(self) -> bool:
        """Bind (``public.listening``); False when it cannot (``public.listen_failed``)."""
        try:
            await self.server.start()
        except (OSError, TlsError) as exc:
            log.error("public.listen_failed", listen=self._config.public.listen, reason=str(exc))
            await self.names.close()
            return False
        self._account_task = asyncio.create_task(self._learn_account(), name="kommo-account")
        return True

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: ``[clicktocall]``, ``[notify] extensions``, origins and the TLS files."""
        self._config = config
        self.clicks.reconfigure(config.clicktocall, config.notify)
        self.server.reconfigure(config.public)

    async def stop(self) -> None:
        if self._account_task is not None:
            self._account_task.cancel()
            await asyncio.gather(self._account_task, return_exceptions=True)
        await self.server.stop()
        await self.names.close()

    def _origins(self) -> frozenset[str]:
        config = self._config
        return frozenset({origin_of(config.kommo.base_url), *config.public.origins})

    def _mark(self, request: OriginateRequest, user_id: int, extension: str, number: str) -> None:
        until = asyncio.get_running_loop().time() + request.timeout_ms / 1000 + CLICK_MARK_MARGIN
        click = Click(user_id=user_id, extension=extension, number=number, until=until)
        self._outcomes.expect_click(request.pbx, request.channel_id, click)

    async def _learn_account(self) -> None:
        """The account tokens must name; retried until Kommo answers (clicks get 503)."""
        delay = ACCOUNT_RETRY_MIN
        while True:
            try:
                account = await self._kommo.account()
            except KommoError:  # logged as kommo.error
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(ACCOUNT_RETRY_MAX, delay * 2)
                continue
            self.clicks.account = account
            log.info("clicktocall.account", account_id=account.id, subdomain=account.subdomain)
            return
