"""A fake Kommo API on loopback, for the tests and for ``kommo-callerid demo``.

It serves the records and searches of :mod:`kommo_callerid.sim.kommo_data` the way the
daemon relies on (the telephony search by phone, the v4 contacts search, call notifications,
the account) plus what tests need to provoke failures: a strict rate limit that counts
violations, injected failures and delays, and a log of every request with its arrival time
on an injectable clock.

Size: a test fake of every Kommo endpoint the product calls.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import secrets
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Self

from aiohttp import web

from kommo_callerid.sim.kommo_data import (
    TYPE_CONTACT,
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
    demo_dataset,
    search_by_phone,
    search_contacts,
)
from kommo_callerid.sim.kommo_journal import (
    CALLS_PATH,
    TASKS_PATH,
    UNSORTED_SIP_PATH,
    FakeJournal,
)
from kommo_callerid.sim.kommo_lists import LIST_KINDS, BadQuery, list_page

__all__ = [
    "ACCOUNT_PATH",
    "BY_PHONE_PATH",
    "CONTACTS_PATH",
    "EVENTS_PATH",
    "HAL_JSON",
    "PROBLEM_JSON",
    "TOKEN_PATH",
    "Clock",
    "FakeCompany",
    "FakeContact",
    "FakeCustomer",
    "FakeKommo",
    "FakeLead",
    "FakeOAuth",
    "KommoDataset",
    "RecordedEvent",
    "RequestRecord",
    "demo_dataset",
    "problem",
]

Clock = Callable[[], float]

PROBLEM_JSON = "application/problem+json"
HAL_JSON = "application/hal+json"
BY_PHONE_PATH = "/api/v2/search/by_phone"
CONTACTS_PATH = "/api/v4/contacts"
EVENTS_PATH = "/api/v2/events"
ACCOUNT_PATH = "/api/v4/account"
TOKEN_PATH = "/oauth2/access_token"  # noqa: S105  (a URL path)


@dataclass
class FakeOAuth:
    """The fake's OAuth integration: single-use refresh tokens, like Kommo's."""

    client_id: str = "integration-id"
    client_secret: str = "integration-secret"  # noqa: S105
    redirect_uri: str = "https://pbx.example/kommo"
    #: The one refresh token that works now; every refresh replaces it.
    refresh_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires_in: int = 86_400
    #: Authorisation codes that can be traded once for a first pair.
    codes: set[str] = field(default_factory=set)
    refreshes: int = 0


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One accepted call notification; ``users`` None means "everyone"."""

    phone_number: str
    users: tuple[int, ...] | None
    received_at: float
    #: The request's place in the arrival order of all requests (1-based).
    order: int


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    status: int
    #: Arrival time on the fake's clock.
    at: float
    order: int


@dataclass(frozen=True, slots=True)
class _Arrival:
    at: float
    order: int


@dataclass(frozen=True, slots=True)
class _Injected:
    status: int
    body: bytes
    content_type: str


def problem(status: int, title: str, detail: str) -> web.Response:
    body = {
        "title": title,
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
    }
    return web.json_response(body, status=status, content_type=PROBLEM_JSON)


_Route = Callable[[web.Request, _Arrival], Awaitable[web.Response]]


class FakeKommo:
    """The fake server; ``async with FakeKommo() as kommo:`` serves it on 127.0.0.1."""

    def __init__(
        self,
        dataset: KommoDataset | None = None,
        *,
        token: str | None = None,
        rate_limit: int | None = None,
        clock: Clock = time.monotonic,
        oauth: FakeOAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        #: Serve over TLS with this (server) context: ``base_url`` is then https.
        self.ssl_context = ssl_context
        self.dataset = dataset if dataset is not None else demo_dataset()
        self.token = token or secrets.token_urlsafe(24)
        #: Requests allowed per sliding 1-second window, all endpoints together; None: no limit.
        self.rate_limit = rate_limit
        #: When set, by_phone answers this status (e.g. 404: an account without the v2 search).
        self.by_phone_status: int | None = None
        #: False: the account has customers switched off (their list answers 402).
        self.customers_enabled = True
        self.events: list[RecordedEvent] = []
        self.requests: list[RequestRecord] = []
        self.violations = 0
        self.oauth = oauth
        #: Called with the access token of every authorised request (order-of-operation tests).
        self.on_authorised: Callable[[str], None] | None = None
        self._outage: tuple[float, _Injected, str | None] | None = None
        self._clock = clock
        self._orders = itertools.count(1)
        self._window: deque[float] = deque()
        self._failures: dict[str, deque[_Injected]] = {}
        self._delays: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._routes: dict[tuple[str, str], _Route] = {
            ("GET", BY_PHONE_PATH): self._by_phone,
            ("GET", CONTACTS_PATH): self._contacts,
            ("POST", EVENTS_PATH): self._events,
            ("GET", ACCOUNT_PATH): self._account,
        }
        for kind in LIST_KINDS[1:]:  # contacts: _contacts lists without a ``query``
            self._routes["GET", f"/api/v4/{kind}"] = self._list
        #: The call journal's endpoints (and what they received).
        self.journal = FakeJournal(self.dataset)
        self._routes[("POST", CALLS_PATH)] = self.journal.add_calls
        self._routes[("POST", UNSORTED_SIP_PATH)] = self.journal.add_unsorted
        self._routes[("POST", TASKS_PATH)] = self.journal.add_tasks

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the fake Kommo server is not running")
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    def fail_next(
        self,
        path: str,
        status: int,
        body: str | bytes = b"",
        *,
        content_type: str = "text/plain",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` authorised requests to ``path`` with this response."""
        raw = body.encode() if isinstance(body, str) else body
        queue = self._failures.setdefault(path, deque())
        queue.extend(_Injected(status, raw, content_type) for _ in range(times))

    def outage(
        self,
        status: int,
        seconds: float,
        *,
        path: str | None = None,
        body: str = "<html><body>Service unavailable</body></html>",
        content_type: str = "text/html",
    ) -> None:
        """Answer every authorised request (to ``path``, or all) with ``status`` for a while."""
        failure = _Injected(status, body.encode(), content_type)
        self._outage = (self._clock() + seconds, failure, path)

    def expire_token(self) -> None:
        """The current access token stops working (as after its day is over)."""
        self.token = secrets.token_urlsafe(24)

    def set_delay(self, path: str, seconds: float) -> None:
        """Hold every request to ``path`` this long (real seconds) before answering."""
        self._delays[path] = seconds

    def requests_to(self, path: str) -> int:
        return sum(1 for record in self.requests if record.path == path)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _dispatch(self, request: web.Request) -> web.Response:
        arrival = _Arrival(self._clock(), next(self._orders))
        response = await self._answer(request, arrival)
        self.requests.append(
            RequestRecord(request.method, request.path, response.status, arrival.at, arrival.order)
        )
        return response

    async def _answer(self, request: web.Request, arrival: _Arrival) -> web.Response:
        if self._over_rate_limit(arrival.at):
            self.violations += 1
            return problem(429, "Too Many Requests", "rate limit exceeded")
        if request.path == TOKEN_PATH and request.method == "POST":
            return await self._token(request)
        if not self._authorised(request):
            return problem(401, "Unauthorized", "missing or invalid access token")
        if self.on_authorised is not None:
            self.on_authorised(self.token)
        delay = self._delays.get(request.path)
        if delay:
            await asyncio.sleep(delay)
        outage = self._outage
        if outage is not None and arrival.at < outage[0] and outage[2] in (None, request.path):
            failure = outage[1]
            return web.Response(
                status=failure.status, body=failure.body, content_type=failure.content_type
            )
        injected = self._failures.get(request.path)
        if injected:
            failure = injected.popleft()
            return web.Response(
                status=failure.status, body=failure.body, content_type=failure.content_type
            )
        route = self._routes.get((request.method, request.path))
        if route is None:
            return problem(404, "Not Found", f"no route {request.method} {request.path}")
        return await route(request, arrival)

    def _over_rate_limit(self, now: float) -> bool:
        # Kommo counts every request, refused ones too, so the window records them all.
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        over = self.rate_limit is not None and len(self._window) >= self.rate_limit
        self._window.append(now)
        return over

    def _authorised(self, request: web.Request) -> bool:
        expected = f"Bearer {self.token}".encode()
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def _by_phone(self, request: web.Request, arrival: _Arrival) -> web.Response:
        if self.by_phone_status is not None:
            status = self.by_phone_status
            return problem(status, HTTPStatus(status).phrase, "by_phone search is not available")
        item = search_by_phone(self.dataset, request.query.get("phone", ""))
        if item is None:
            return web.Response(status=204)
        return web.json_response({"_embedded": {"items": [item]}}, content_type=HAL_JSON)

    async def _contacts(self, request: web.Request, arrival: _Arrival) -> web.Response:
        if "query" not in request.query:
            return await self._list(request, arrival)
        found = search_contacts(self.dataset, request.query.get("query", ""))
        if not found:
            return web.Response(status=204)
        return web.json_response({"_embedded": {"contacts": found}}, content_type=HAL_JSON)

    async def _list(self, request: web.Request, arrival: _Arrival) -> web.Response:
        kind = request.path.rsplit("/", 1)[-1]
        if kind == "customers" and not self.customers_enabled:
            return problem(402, "Payment Required", "customers are switched off for this account")
        query = {key: value for key, value in request.query.items() if key != "filter[id][]"}
        ids = request.query.getall("filter[id][]", [])
        try:
            body = list_page(self.dataset, kind, query, ids, self.base_url)
        except BadQuery as exc:
            return problem(400, "Bad Request", str(exc))
        if body is None:
            return web.Response(status=204)
        return web.json_response(body, content_type=HAL_JSON)

    async def _events(self, request: web.Request, arrival: _Arrival) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return problem(400, "Bad Request", "body is not valid JSON")
        parsed = _parse_events(payload)
        if isinstance(parsed, str):
            return problem(400, "Bad Request", parsed)
        items = []
        for phone_number, users in parsed:
            self.events.append(RecordedEvent(phone_number, users, arrival.at, arrival.order))
            found = search_by_phone(self.dataset, phone_number)
            element_id = found["id"] if found else 0
            element_type = found["type"] if found else TYPE_CONTACT
            uid = uuid.uuid4().hex
            items.append({"element_id": element_id, "element_type": element_type, "uid": uid})
        return web.json_response({"_embedded": {"items": items}})

    async def _token(self, request: web.Request) -> web.Response:
        oauth, form = self.oauth, await _form(request)
        if oauth is None:
            return problem(404, "Not Found", "this fake has no OAuth integration")
        client = (form.get("client_id"), form.get("client_secret"), form.get("redirect_uri"))
        if client != (oauth.client_id, oauth.client_secret, oauth.redirect_uri):
            return problem(401, "Unauthorized", "Client authentication failed")
        grant = form.get("grant_type")
        if grant == "refresh_token" and form.get("refresh_token") == oauth.refresh_token:
            oauth.refreshes += 1
        elif grant == "authorization_code" and form.get("code") in oauth.codes:
            oauth.codes.discard(form["code"])
        else:
            return problem(400, "Bad Request", "Token has been revoked")
        self.token = secrets.token_urlsafe(24)
        oauth.refresh_token = secrets.token_urlsafe(24)
        body = {
            "token_type": "Bearer",
            "expires_in": oauth.expires_in,
            "access_token": self.token,
            "refresh_token": oauth.refresh_token,
        }
        return web.json_response(body)

    async def _account(self, request: web.Request, arrival: _Arrival) -> web.Response:
        body = {"id": 31_415_926, "name": "Demo account", "subdomain": "demo"}
        return web.json_response(body, content_type=HAL_JSON)


async def _form(request: web.Request) -> dict[str, str]:
    """Kommo's token endpoint takes JSON or a form."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in (await request.post()).items()}


def _parse_events(payload: object) -> list[tuple[str, tuple[int, ...] | None]] | str:
    """The accepted events, or a sentence saying what is wrong with the body."""
    if not isinstance(payload, dict) or not isinstance(payload.get("add"), list):
        return "body must be an object with an 'add' list"
    if not payload["add"]:
        return "'add' must not be empty"
    events: list[tuple[str, tuple[int, ...] | None]] = []
    for event in payload["add"]:
        if not isinstance(event, dict) or event.get("type") != "phone_call":
            return "each event must be an object with type 'phone_call'"
        phone_number = event.get("phone_number")
        if not isinstance(phone_number, str) or not phone_number:
            return "phone_number must be a non-empty string"
        if "users" not in event:
            events.append((phone_number, None))
            continue
        users = event["users"]
        if not isinstance(users, list) or not all(_is_user_id(user) for user in users):
            return "users must be a list of user ids"
        events.append((phone_number, tuple(users)))
    return events


def _is_user_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
