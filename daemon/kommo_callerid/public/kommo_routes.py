"""``POST /kommo/call`` and ``GET /kommo/me``: HTTP around the click-to-call service.

The body is ``{"phone": "..."}`` as JSON or a form (what ``$authorizedAjax`` sends by
default), at most ``server.MAX_BODY`` bytes, read within the listener's ``request_timeout``
(the guard reads it before the handler runs, under the connection's deadline); any other key
(an extension, a channel) is ignored. The token is ``X-Auth-Token``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Protocol
from urllib.parse import parse_qs

from aiohttp import web

from kommo_callerid.clicktocall.service import ClickAnswer
from kommo_callerid.public.server import PublicServer

CALL_PATH = "/kommo/call"
ME_PATH = "/kommo/me"
TOKEN_HEADER = "X-Auth-Token"  # noqa: S105  (a header name, not a secret)


class Clicks(Protocol):
    """``clicktocall.service.ClickToCall``."""

    async def call(self, token: str | None, phone: object) -> ClickAnswer: ...
    async def me(self, token: str | None) -> ClickAnswer: ...


def register(server: PublicServer, clicks: Clicks) -> None:
    body_timeout = server.limits.request_timeout

    async def call(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(body_timeout):
                raw = await request.read()
        except TimeoutError:
            return web.json_response({"error": "body", "detail": "too slow"}, status=408)
        phone = _phone(raw, request.content_type)
        return _answer(await clicks.call(request.headers.get(TOKEN_HEADER), phone))

    async def me(request: web.Request) -> web.Response:
        return _answer(await clicks.me(request.headers.get(TOKEN_HEADER)))

    server.add_route("POST", CALL_PATH, call)
    server.add_route("GET", ME_PATH, me)


def _phone(raw: bytes, content_type: str) -> object:
    """The ``phone`` value, or None; never raises (a bad body is a number that is not one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if content_type == "application/json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data.get("phone") if isinstance(data, dict) else None
    values = parse_qs(text, max_num_fields=20).get("phone")
    return values[0] if values else None


def _answer(answer: ClickAnswer) -> web.Response:
    return web.json_response(answer.body, status=answer.status)
