"""The HTTP side of the Kommo client: every request goes through :meth:`KommoTransport.request`
(or, written in the caller's turn when nothing waits, :meth:`KommoTransport.send_now`).

One place for the rate limit (notifications first), the global pause after 429 and block
after 403, the Authorization header (and one token refresh after a 401), the body size cap,
the counters, and the retries: 429, 5xx, 403, timeouts and connection errors are retried
with jittered backoff until the request's deadline (for a notification: ``notify_ttl``
after the call arrived); other answers go back to the caller to judge.

Size: one request's whole path (rate-limit slot, gate, authorisation, retries, body cap) in
one place, so no request can skip a step; how an answer is judged is in :mod:`.answers`.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import aiohttp

from kommo_callerid import __version__
from kommo_callerid.cluster.limiter import Limiter
from kommo_callerid.core.config import KommoConfig
from kommo_callerid.core.models import DeadlineReached, KommoAuthError, KommoError, LatencyHistogram
from kommo_callerid.core.waiters import SlotExpired
from kommo_callerid.kommo.answers import (
    Failure,
    RetryLog,
    pause_asked,
    read_capped,
    retryable,
    seconds,
)
from kommo_callerid.kommo.auth import TOKEN_PATH, TokenProvider
from kommo_callerid.kommo.fastpost import Exchange, FastAnswer, FastPathUnavailable, FastPost
from kommo_callerid.kommo.limits import (
    Clock,
    GateClosed,
    Priority,
    RateLimiter,
    RequestGate,
    Sleep,
    retry_delay,
)
from kommo_callerid.kommo.parse import DETAIL_CHARS, Response, error_detail
from kommo_callerid.kommo.proxy import proxy_for

#: Kommo's answers are small; anything bigger is not an answer we can use.
MAX_BODY_BYTES = 1 << 20
_USER_AGENT = f"kommo-callerid/{__version__}"
#: Warm connections: a call's notifications, its lookup and a journal request may all be in
#: flight at once (the cold case sends the lookup, then the notification right after).
FAST_CONNECTIONS = 4
#: Requests whose first attempt goes out on a warm connection; the phone book's sync (pages
#: of up to a megabyte, minutes apart) keeps to aiohttp and leaves the connections free.
_FAST_PRIORITIES = frozenset({Priority.NOTIFY, Priority.LOOKUP, Priority.JOURNAL})


class BacklogExpired(DeadlineReached):
    """The deadline passed while the request waited for the rate limit: never sent."""


@dataclass(slots=True)
class KommoStats:
    """Counters for ``stats`` log lines and /metrics. ``requests`` status None: no answer."""

    requests: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    retries: int = 0
    lookups: int = 0
    lookups_failed: int = 0
    cache_hits: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0
    #: Seconds per lookup as the caller saw it (cache hits included).
    lookup_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(frozen=True, slots=True)
class _Call:
    """What one request is: sent the same way on every attempt."""

    method: str
    path: str
    params: dict[str, str] | list[tuple[str, str]] | None
    payload: Any
    priority: Priority
    deadline: float
    #: Send ``payload`` as a form (the OAuth token endpoint) rather than JSON.
    form: bool = False


class KommoTransport:
    def __init__(
        self,
        config: KommoConfig,
        auth: TokenProvider,
        stats: KommoStats,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep,
        limiter: Limiter | None = None,
        warm: bool = True,
    ) -> None:
        """``warm``: keep warm connections (the daemon); a one-shot command does not."""
        self._config = config
        self.auth = auth
        self._stats = stats
        self._clock = clock
        self._sleep = sleep
        self._limiter: Limiter = limiter or RateLimiter(config.rate_limit, clock=clock, sleep=sleep)
        self.gate = RequestGate(clock=clock, sleep=sleep)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._errors = RetryLog(clock)
        choice = proxy_for(config)
        self._proxy = choice.url if choice is not None else None
        # One TLS context for both ways out, so the warm connection trusts (and checks host
        # names against) exactly what aiohttp does: aiohttp's own default context is made at
        # its import, before SSL_CERT_FILE / SSL_CERT_DIR could be set.
        self._ssl: ssl.SSLContext | None = None
        if config.base_url.lower().startswith("https:"):
            self._ssl = ssl.create_default_context()
        #: The warm connections (issue 22); never through a proxy.
        self.fast: FastPost | None = None
        if self._proxy is None and warm:
            self.fast = FastPost(
                config.base_url,
                _USER_AGENT,
                max_body=MAX_BODY_BYTES,
                size=FAST_CONNECTIONS,
                ssl_context=self._ssl,
            )

    def table_sizes(self) -> dict[str, int]:
        return {"limiter_waiting": self._limiter.waiting, "error_log_keys": len(self._errors)}

    async def close(self) -> None:
        self._closed = True
        if self.fast is not None:
            await self.fast.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        payload: Any = None,
        priority: Priority = Priority.LOOKUP,
        max_attempts: int | None = None,
    ) -> Response:
        """The first answer that is not worth retrying (or the last of ``max_attempts``);
        raises :class:`DeadlineReached` (also when the attempts ran out without an answer)
        or :class:`KommoAuthError`. A body over :data:`MAX_BODY_BYTES` is not read: the
        answer comes back ``oversized``."""
        call = _Call(method, path, params, payload, priority, deadline)
        return await self._exchange(call, max_attempts, self._write_now(call))

    def send_now(
        self, path: str, payload: Any, priority: Priority, deadline: float
    ) -> Coroutine[Any, Any, Response] | None:
        """A POST written now, in the caller's turn, if nothing stands in its way (see
        :meth:`_write_now`); the coroutine, awaited at once, is then :meth:`request`'s: the
        answer, the retries, the same errors. None: nothing was sent, call :meth:`request`."""
        call = _Call("POST", path, None, payload, priority, deadline)
        first = self._write_now(call)
        return None if first is None else self._exchange(call, first=first)

    def _write_now(self, call: _Call) -> Coroutine[Any, Any, tuple[str, Response | Failure]] | None:
        """The first attempt written without an await, when nothing stands in its way: the
        gate open, the token at hand, a slot of the (local) rate limit free with nobody
        waiting, a warm connection idle; its answer, awaited at once. None: the ordinary way.

        Why (issue 22): a warm call's notification crossed nine coroutines and a context
        manager on its way to the socket, a good part of its path inside the daemon."""
        fast = self.fast
        limiter = self._limiter
        if fast is None or self._closed or not _fast_eligible(call):
            return None
        if not isinstance(limiter, RateLimiter):
            return None  # the cluster's limiter asks Redis: never without an await
        authorization = self.auth.authorization_now()
        budget = min(self._config.timeout, call.deadline - self._clock())
        if authorization is None or budget <= 0 or not self.gate.enter_now():
            return None
        if not limiter.take_now(call.deadline):
            self.gate.abandon()
            return None
        try:
            exchange = self._write(fast, call, authorization, _payload(call), budget)
        except FastPathUnavailable:
            limiter.give_back()  # nothing went out: the slot is not spent
            self.gate.abandon()
            return None
        return self._written(call, authorization, exchange, budget)

    async def _written(
        self, call: _Call, authorization: str, exchange: Exchange, budget: float
    ) -> tuple[str, Response | Failure]:
        """The answer to what :meth:`_write_now` wrote, within its slot; when the server closed
        the connection without one, the request goes the ordinary way (as in :meth:`_send`)."""
        assert self.fast is not None and isinstance(self._limiter, RateLimiter)
        try:
            outcome = await self._fast_answer(self.fast, call.path, exchange, budget)
            if outcome is None:
                headers = {"Authorization": authorization}
                outcome = await self._send(self._ensure_session(), call, headers)
            return authorization, outcome
        finally:
            self._limiter.release()

    async def _exchange(
        self,
        call: _Call,
        max_attempts: int | None = None,
        first: Awaitable[tuple[str | None, Response | Failure]] | None = None,
    ) -> Response:
        """:meth:`request`'s attempts; ``first``: the first one, written already."""
        path, deadline = call.path, call.deadline
        refreshed, attempt = False, 0
        last: Response | Failure = Failure("no attempt before the deadline")
        while True:
            attempt += 1
            try:
                if first is None and not self.gate.enter_now():
                    await self.gate.enter(deadline)
            except GateClosed:
                raise self._deadline(path, last, attempt - 1) from None
            try:
                # Only a first attempt takes the fast path: a retry (after a 401's refresh,
                # a 429, a lost answer) goes the ordinary way.
                if first is not None:
                    authorization, outcome = await first
                    first = None
                else:
                    authorization, outcome = await self._authorized_attempt(call, attempt == 1)
            except BaseException as exc:
                self.gate.abandon()
                if isinstance(exc, BacklogExpired) and attempt > 1:
                    # A retry that found no slot before the deadline: it was sent before, and
                    # its last failure is what the caller needs to hear, not the backlog.
                    raise self._deadline(path, last, attempt - 1) from None
                raise
            self.gate.leave(outcome.status, pause_asked(outcome))
            if outcome.status == 401 and not refreshed and authorization is not None:
                outcome, refreshed = await self._after_401(authorization, outcome)
                if refreshed:
                    continue
            out_of_attempts = max_attempts is not None and attempt >= max_attempts
            if isinstance(outcome, Response) and (out_of_attempts or not retryable(outcome.status)):
                return outcome if attempt == 1 else replace(outcome, attempts=attempt)
            last = outcome
            delay = pause_asked(outcome) or retry_delay(attempt)
            if out_of_attempts or self._clock() + delay >= deadline:
                raise self._deadline(path, last, attempt)
            self._stats.retries += 1
            self._errors.retrying(path, outcome, attempt, delay)
            await self._sleep(delay)

    async def exchange_tokens(self, form: dict[str, str]) -> Response:
        """One unauthenticated POST to the OAuth token endpoint, within the rate limit."""
        deadline = self._clock() + self._config.timeout
        call = _Call("POST", TOKEN_PATH, None, form, Priority.AUTH, deadline, form=True)
        outcome = await self._attempt(call, None)
        if isinstance(outcome, Failure):
            raise KommoError(None, TOKEN_PATH, outcome.detail)
        return outcome

    async def _after_401(
        self, authorization: str, outcome: Response | Failure
    ) -> tuple[Response | Failure, bool]:
        """Refresh once after a 401; True when the request is worth sending again."""
        try:
            return outcome, await self.auth.rejected(authorization)
        except KommoAuthError:
            raise
        except KommoError as exc:  # the refresh failed for now (or was not saved): retry later
            return Failure(f"token refresh failed: {exc.detail}"), False

    async def _authorized_attempt(
        self, call: _Call, first: bool
    ) -> tuple[str | None, Response | Failure]:
        try:
            authorization = await self.auth.authorization()
        except KommoAuthError:
            raise
        except KommoError as exc:  # the token endpoint failed for now: retry like any failure
            return None, Failure(f"token refresh failed: {exc.detail}")
        return authorization, await self._attempt(call, authorization, first)

    async def _attempt(
        self, call: _Call, authorization: str | None, first: bool = False
    ) -> Response | Failure:
        session = self._ensure_session()
        headers = {"Authorization": authorization} if authorization else {}
        fast = self.fast
        if fast is not None:
            fast.want()  # the first request of any kind opens the warm connection
            if not (first and authorization and _fast_eligible(call)):
                fast = None
        try:
            async with self._limiter.slot(call.priority, call.deadline):
                return await self._send(session, call, headers, fast)
        except SlotExpired:
            detail = "waited for the rate limit until the deadline (a backlog of requests)"
            raise BacklogExpired(None, call.path, detail, 0) from None

    async def _send(
        self,
        session: aiohttp.ClientSession,
        call: _Call,
        headers: dict[str, str],
        fast: FastPost | None = None,
    ) -> Response | Failure:
        """One HTTP exchange within a rate-limit slot."""
        path = call.path
        budget = min(self._config.timeout, call.deadline - self._clock())
        if budget <= 0:
            return Failure("no time left before the deadline")
        payload = _payload(call)
        if fast is not None:
            outcome = await self._send_fast(fast, call, headers["Authorization"], payload, budget)
            if outcome is not None:
                return outcome
        try:
            async with session.request(
                call.method,
                self._config.base_url + path,
                params=call.params,
                json=None if call.form else payload,
                data=payload if call.form else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=budget),
                allow_redirects=False,  # never carry the token to wherever a redirect points
                proxy=self._proxy,
            ) as answer:
                status, content_type = answer.status, answer.content_type
                header_pause = seconds(answer.headers.get("Retry-After"))
                body = await read_capped(answer, MAX_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._stats.requests[path, None] += 1
            return Failure(self._transport_detail(exc, budget))
        self._stats.requests[path, status] += 1
        if body is None:  # the caller decides: a notification's 2xx is a success whatever it says
            return Response(path, status, content_type, b"", header_pause, oversized=True)
        return Response(path, status, content_type, body, retry_after=header_pause)

    async def _send_fast(
        self, fast: FastPost, call: _Call, authorization: str, payload: Any, budget: float
    ) -> Response | Failure | None:
        """The exchange on a warm connection; None: send it the ordinary way (in the same
        slot: nothing went out, or the server closed the connection without answering)."""
        try:
            exchange = self._write(fast, call, authorization, payload, budget)
        except FastPathUnavailable:
            return None
        return await self._fast_answer(fast, call.path, exchange, budget)

    def _write(
        self, fast: FastPost, call: _Call, authorization: str, payload: Any, budget: float
    ) -> Exchange:
        path = call.path
        target = f"{path}?{urlencode(call.params)}" if call.params else path
        body = None if payload is None else json.dumps(payload).encode()
        spare = 1 if call.priority is Priority.JOURNAL else 0  # one left for a notification
        return fast.write(call.method, target, authorization, body, budget, spare=spare)

    async def _fast_answer(
        self, fast: FastPost, path: str, exchange: Exchange, budget: float
    ) -> Response | Failure | None:
        """The answer on the warm connection; None: the server closed it without one."""
        try:
            answer = await fast.answer(exchange)
        except FastPathUnavailable:
            return None
        except TimeoutError as exc:
            self._stats.requests[path, None] += 1
            return Failure(self._transport_detail(exc, budget))
        return self._fast_response(path, answer)

    def _fast_response(self, path: str, answer: FastAnswer) -> Response:
        status = answer.status
        self._stats.requests[path, status] += 1
        pause = seconds(answer.retry_after)
        if answer.body is None:
            return Response(path, status, answer.content_type, b"", pause, oversized=True)
        return Response(path, status, answer.content_type, answer.body, retry_after=pause)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the Kommo client is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": _USER_AGENT}, connector=connector
            )
        return self._session

    def _transport_detail(self, exc: BaseException, budget: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {budget:.2g} s"
        return f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]

    def _deadline(self, path: str, last: Response | Failure, attempts: int) -> DeadlineReached:
        detail = last.detail if isinstance(last, Failure) else error_detail(last)
        return DeadlineReached(last.status, path, detail, attempts)


def _payload(call: _Call) -> Any:
    """A callable payload is made inside the slot (every attempt): a batch is sealed then."""
    return call.payload() if callable(call.payload) else call.payload


def _fast_eligible(call: _Call) -> bool:
    """A notification, a lookup or a journal request: a GET, or a POST with a JSON body."""
    return call.priority in _FAST_PRIORITIES and call.method in ("GET", "POST") and not call.form
