"""The link to Redis: one client for the whole daemon, and whether the cluster is usable.

Why redis-py (``redis.asyncio``) rather than coredis: it is already a dependency, it is the
client Redis itself maintains (Valkey speaks the same protocol), its ``register_script``
runs a Lua script by SHA and reloads it after a server restart (NOSCRIPT), and it ships the
``Lock`` the OAuth refresh needs. coredis has nicer typing and cluster-topology support, but
we talk to one server and need neither; one fewer dependency to audit wins.

State: ``ok`` while Redis answers, ``degraded`` once it does not (each daemon then works
alone, see :mod:`kommo_callerid.cluster.limiter` and :mod:`.claims`). While degraded nothing
waits for Redis: callers ask :attr:`ClusterLink.ok` first, and a probe loop (:meth:`watch`)
probes once a second until Redis takes a write again (``cluster.restored``). An operation that
got no answer makes the probe try at once, and only a failed probe degrades the link: an
operation can also miss its answer because this daemon's event loop stalled past the socket
timeout (a burst of work; Redis had answered in time), and that must not make the daemon work
alone. A *refusal* is different: Redis answered, with an error (``OOM`` when full under
``noeviction``, ``READONLY`` from a replica, ``MISCONF``, or ``EPOCH`` below), so the loop is
not stalled and Redis will not do what the cluster needs: the link degrades at once, and the
probe restores it only once a write goes through. Without the probe loop (a one-shot command)
every failed operation degrades the link at once.

Redis may also forget everything while it keeps answering (``FLUSHALL``, a restart without
persistence faster than the probe): claims read as free, the window as empty. So the daemons
share an *epoch*, a random value in ``<key_prefix>:epoch`` that the first of them wrote; every
script that decides something (a claim, the claims' tick, a slot of the window) first checks
it (:data:`GUARD`) and answers ``EPOCH`` when it is gone or another: the daemon treats that as
an outage (``cluster.degraded``, then ``cluster.restored`` at the next probe, which writes a
new epoch or adopts the one another daemon wrote). The probe checks it too, for an idle daemon.

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
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog
from redis import asyncio as aioredis
from redis.commands.core import AsyncScript
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

#: The first lines of every guarded script: KEYS[1] is the epoch key and ARGV[1] the epoch
#: this daemon knows; both are taken off, so the rest of the script reads its own KEYS/ARGV.
GUARD = """
local epoch_key, epoch = table.remove(KEYS, 1), table.remove(ARGV, 1)
if redis.call('GET', epoch_key) ~= epoch then
  return redis.error_reply('EPOCH Redis lost the cluster state (flushed, or restarted empty)')
end
"""

#: The probe: a write (refused while Redis refuses writes: OOM, READONLY, MISCONF) that
#: keeps the epoch, or sets ARGV[1] as the new one when there is none; returns the epoch.
PROBE = """
local epoch = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[1], epoch)
return epoch
"""

#: The reason logged when the probe finds the epoch gone or changed.
LOST_DATA = "Redis lost the cluster state (flushed, or restarted empty)"


class ClusterStartError(Exception):
    """Redis cannot be used at start-up; the message is a sentence for the operator."""


class EpochLost(Exception):
    """The probe found the cluster's epoch gone or changed: Redis forgot its state."""


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
        #: The cluster's epoch as this daemon knows it (:data:`GUARD`); set by :meth:`connect`.
        self.epoch = ""
        self._epoch_key = self.key("epoch")
        self._probe_script = self.redis.register_script(PROBE)
        self._ok = True
        self._restored = asyncio.Event()
        #: When (``time.monotonic``) Redis last came back; never, at first.
        self.restored_at = -math.inf
        self.degradations = 0
        #: Why the link last degraded (the ``cluster.degraded`` line's reason).
        self.reason = ""
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
        try:
            self.epoch = await self._write_epoch()
        except ResponseError as exc:
            # Reachable and ours, but refusing writes (full, read-only): a restart would not
            # help, so start alone; the probe brings the daemon in once a write goes through.
            log.info("cluster.connected", redis=where, node=self.node)
            self._degrade(exc)
            return
        except FAILURES as exc:
            raise ClusterStartError(
                f"Redis at {where} stopped answering ({type(exc).__name__}: {exc})"
            ) from None
        log.info("cluster.connected", redis=where, node=self.node)

    def guarded(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[int | str]
    ) -> Awaitable[Any]:
        """Run ``script``, which starts with :data:`GUARD`, with the epoch we know."""
        return script(keys=[self._epoch_key, *keys], args=[self.epoch, *args])

    async def _write_epoch(self) -> str:
        """The probe's write: the current epoch (a new one when Redis has none)."""
        epoch = await self._probe_script(keys=[self._epoch_key], args=[secrets.token_hex(8)])
        return epoch.decode() if isinstance(epoch, bytes) else str(epoch)

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
        """An operation failed: degraded if the probe fails too (at once without it, or when
        Redis refused: an answer, so not a stall of ours)."""
        if not self._ok or self._closed:
            return  # (closed: what was still running at the daemon's stop failed)
        if self._probing and not isinstance(exc, ResponseError):
            self._suspect = self._suspect or exc
            self._check_now.set()
        else:
            self._degrade(exc)

    def _degrade(self, exc: BaseException) -> None:
        if self._ok:
            self._ok = False
            self.degradations += 1
            self._restored = asyncio.Event()
            self.reason = f"{type(exc).__name__}: {exc}"[:200]
            log.warning(
                "cluster.degraded",
                reason=self.reason,
                node=self.node,
                rate_share=f"1/{self.config.expected_nodes}",
            )

    async def watch(self) -> None:
        """Forever: probe every second, and at once after an operation got no answer; notice
        loss (``cluster.degraded``), and report ``cluster.restored``."""
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
            epoch = await self._write_epoch()
        except FAILURES as exc:
            self._degrade(suspect or exc)
            return
        if epoch != self.epoch:
            # A flush (or a restart) since: while ok, like an outage until the next probe
            # (every daemon's guarded scripts fail meanwhile); while degraded, nothing to add.
            self.epoch = epoch
            if self._ok:
                self._degrade(EpochLost(LOST_DATA))
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
