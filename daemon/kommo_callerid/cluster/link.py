"""The link to Redis: one client for the whole daemon, and whether the cluster is usable.

Why redis-py (``redis.asyncio``) rather than coredis: it is already a dependency, it is the
client Redis itself maintains (Valkey speaks the same protocol), its ``register_script``
runs a Lua script by SHA and reloads it after a server restart (NOSCRIPT), and it ships the
``Lock`` the OAuth refresh needs. coredis has nicer typing and cluster-topology support, but
we talk to one server and need neither; one fewer dependency to audit wins.

State: ``ok`` while Redis answers, ``degraded`` once it does not (each daemon then works
alone, see :mod:`kommo_callerid.cluster.limiter` and :mod:`.claims`). While degraded nothing
waits for Redis: callers ask :attr:`ClusterLink.ok` first, and a probe loop (:meth:`watch`)
PINGs once a second until Redis answers again (``cluster.restored``). A failed operation makes
the probe PING at once, and only a failed PING degrades the link: an operation can also fail
because this daemon's event loop stalled past the socket timeout (a burst of work; Redis had
answered in time), and that must not make the daemon work alone. Without the probe loop (a
one-shot command) a failed operation degrades the link at once.

The pool is warmed at start-up with :data:`WARM_CONNECTIONS` connections, so a flood does not
open new ones while the loop is busiest (a connect that misses its timeout fails too).

Per-call operations (a call's claim, its lookup in the shared cache) go through
:meth:`ClusterLink.call_bounded`: at most :data:`BOUNDED_CALLS` of them at once, well below the
pool's :data:`MAX_CONNECTIONS`. A flood of a thousand calls then queues here, in order,
instead of waiting for pooled connections (a wait longer than :data:`POOL_WAIT` counts as
Redis being lost), and the rate limiter and the OAuth lock always find a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis import asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from kommo_callerid.core.config import ClusterConfig, redis_url_for_messages

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: A Redis call slower than this counts as Redis being gone (loopback answers in < 1 ms).
SOCKET_TIMEOUT = 0.5
PROBE_INTERVAL = 1.0
MAX_CONNECTIONS = 64
#: How long an operation waits for a free pooled connection before Redis counts as lost.
POOL_WAIT = 2.0
#: Per-call operations in flight at once (:meth:`ClusterLink.call_bounded`).
BOUNDED_CALLS = 16
#: Connections opened at start-up: the bounded calls, the limiter's, a tick's and the probe's.
WARM_CONNECTIONS = BOUNDED_CALLS + 4
#: What a lost or unhealthy Redis raises through redis-py.
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class ClusterStartError(Exception):
    """Redis cannot be used at start-up; the message is a sentence for the operator."""


class ClusterLink:
    def __init__(self, config: ClusterConfig, *, client: aioredis.Redis | None = None) -> None:
        self.config = config
        self.node = config.node or socket.gethostname()
        password = config.redis_password.get_secret_value() or None
        # Blocking pool: a burst of calls waits for a free connection instead of failing
        # with "too many connections" (which would count as Redis being lost).
        pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url,
            password=password,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
        )
        self.redis: aioredis.Redis = client or aioredis.Redis.from_pool(pool)
        self._ok = True
        self._restored = asyncio.Event()
        #: When (``time.monotonic``) Redis last came back; never, at first.
        self.restored_at = -math.inf
        self.degradations = 0
        self._bounded = asyncio.Semaphore(BOUNDED_CALLS)
        #: An operation failed while ok: the probe PINGs now; this is the reason if it fails.
        self._suspect: BaseException | None = None
        self._check_now = asyncio.Event()
        self._probing = False
        self._closed = False

    @property
    def ok(self) -> bool:
        return self._ok

    def key(self, *parts: str) -> str:
        return ":".join((self.config.key_prefix, *parts))

    async def connect(self) -> None:
        """PING once; raise :class:`ClusterStartError` with a sentence when that fails."""
        where = redis_url_for_messages(self.config.redis_url)
        try:
            await self.redis.ping()
        except AuthenticationError:
            raise ClusterStartError(
                f"Redis at {where} refused the password; set the credential redis_password "
                "(or fix it) and start again"
            ) from None
        except ResponseError as exc:
            raise ClusterStartError(f"Redis at {where} refused us: {exc}") from None
        except FAILURES as exc:
            raise ClusterStartError(
                f"cannot reach Redis at {where} ({type(exc).__name__}: {exc}); check "
                "[cluster] redis_url and that redis-server runs"
            ) from None
        await asyncio.gather(*(self.redis.ping() for _ in range(WARM_CONNECTIONS)))
        log.info("cluster.connected", redis=where, node=self.node)

    async def call(self, operation: Awaitable[T]) -> T:
        """Await one Redis operation; on failure tell :meth:`failed` and raise it again."""
        try:
            return await operation
        except FAILURES as exc:
            self.failed(exc)
            raise

    async def call_bounded(self, operation: Callable[[], Awaitable[T]]) -> T:
        """:meth:`call` for a per-call operation, made (``operation()``) and awaited once one
        of the :data:`BOUNDED_CALLS` places is free."""
        async with self._bounded:
            return await self.call(operation())

    def failed(self, exc: BaseException) -> None:
        """An operation failed: degraded if the probe's PING fails too (at once without it)."""
        if not self._ok or self._closed:
            return  # (closed: what was still running at the daemon's stop failed)
        if self._probing:
            self._suspect = self._suspect or exc
            self._check_now.set()
        else:
            self._degrade(exc)

    def _degrade(self, exc: BaseException) -> None:
        if self._ok:
            self._ok = False
            self.degradations += 1
            self._restored = asyncio.Event()
            log.warning(
                "cluster.degraded",
                reason=f"{type(exc).__name__}: {exc}"[:200],
                node=self.node,
                rate_share=f"1/{self.config.expected_nodes}",
            )

    async def watch(self) -> None:
        """Forever: PING every second, and at once after a failed operation; notice loss
        (``cluster.degraded``), and report ``cluster.restored``."""
        self._probing = True
        this = asyncio.current_task()
        try:
            # Not ``while True``: a cancel that lands as a timeout expires (here, or in
            # redis-py's socket timeout) can come out as TimeoutError and be swallowed on
            # Python 3.11; the task still says it is being cancelled (a hang at stop, seen).
            while this is None or not this.cancelling():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROBE_INTERVAL):
                        await self._check_now.wait()
                self._check_now.clear()
                await self._probe()
        finally:
            self._probing = False

    async def _probe(self) -> None:
        suspect, self._suspect = self._suspect, None
        try:
            await self.redis.ping()
        except FAILURES as exc:
            self._degrade(suspect or exc)
            return
        if not self._ok:
            # Connections pooled before the loss may point at a server that restarted.
            await self.redis.connection_pool.disconnect()
            self._ok = True
            self.restored_at = time.monotonic()
            self._restored.set()
            log.info("cluster.restored", node=self.node)

    async def close(self) -> None:
        self._closed = True
        await self.redis.aclose()
