"""Exactly one daemon acts on a call: a claim per (call id, purpose) in Redis.

Claiming sets the key to a token of ours when it is free (one Lua call, ``CLAIM``), which
makes this daemon the owner; the claim lives ``ttl`` and is renewed every ``ttl / 3`` while
the owner works and, when done, replaced with a ``done`` marker kept for :data:`DONE_KEEP`
seconds, so a daemon that sees the call late (or again after an AMI reconnect) leaves it
alone. A daemon that lost the race keeps watching: when the owner dies its claim lapses
within ``ttl`` and the first watcher to claim it again takes over.

What that costs Redis does not grow with the calls held or watched (a flood holds a thousand
at once): one ticker per daemon (:meth:`Claims.start`, every ``ttl / 3``) renews every held
claim and reads every watched one in one Lua call (``TICK``; a call per
:data:`TICK_CHUNK` keys), then wakes the watchers with what it read. Claiming, finishing and
releasing stay one command per call, at most ``BOUNDED_CALLS`` at once
(:meth:`~.link.ClusterLink.call_bounded`), so a flood never drains the connection pool. A
failed tick is tried again after ``ttl / 6`` and does not by itself mark the link degraded
(the link's probe decides that): a claim lapses only when three ticks in a row missed it. A
tick Redis *refused* (full, or the epoch lost: :mod:`.link`) degrades it at once.

While Redis is lost every claim is granted locally (the daemon works alone): a call that
several daemons see is then handled by each of them (duplicates, never a lost call).

The journal claims with ``purpose="journal"`` (held until Kommo took the record:
:mod:`kommo_callerid.daemon.cluster_journal`), notifications with ``"notify"``.

Size: a claim's whole life (won, renewed, watched, finished or released) in one place, since
the ticker that renews and the watchers that read share one Redis call per tick.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import NamedTuple

import structlog
from redis.exceptions import ResponseError

from kommo_callerid.cluster.claim_scripts import CLAIM, FINISH, RECORD, RELEASE, TICK
from kommo_callerid.cluster.link import FAILURES, GUARD, ClusterLink
from kommo_callerid.cluster.ticker import Ticker

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: How long a claim lives without renewal: how long a dead owner's call waits for a watcher.
CLAIM_TTL = 3.0
#: How long a finished call's marker stays (longer than any call's notify_ttl).
DONE_KEEP = 3600.0
EVERYONE = "*"
#: Keys per Lua call of a tick (a flood's thousand claims: one call).
TICK_CHUNK = 2_000

#: A claim's state as the scripts report it (:mod:`.claim_scripts`).
FREE, HELD, FINISHED = 0, 1, 2
#: What a watcher hears once the ticker has stopped (the daemon stops): give up.
STOPPED = -1


class Attempt(NamedTuple):
    """One try at a claim: ``claim`` when won; else ``state`` (HELD or FINISHED) and, for a
    finished one, the node that finished it (``by``; "" when unknown)."""

    claim: Claim | None
    state: int
    by: str = ""


class Claim:
    """This daemon owns (call id, purpose) until :meth:`finish` or :meth:`release`; the
    daemon's ticker renews it meanwhile."""

    def __init__(
        self, claims: Claims | None, key: str, token: str, notified: frozenset[str] = frozenset()
    ) -> None:
        self._claims = claims
        self.key = key
        self._token = token
        self._notified = notified

    @property
    def shared(self) -> bool:
        """False: granted locally while Redis was lost."""
        return self._claims is not None

    @property
    def held(self) -> bool:
        """False once a tick found it lost (expired and taken, or Redis restarted empty)."""
        return self._claims is None or self._claims.holds(self.key, self._token)

    async def finish(self, keep: float = DONE_KEEP) -> None:
        """Done: nobody acts on this call again for ``keep`` seconds."""
        if self._claims is not None:
            try:  # renewed until the marker is set: a flood's finishes may queue a while
                await self._claims.run(self._claims.finish_script, self.key, self._token, keep)
            finally:
                self._claims.drop(self.key, self._token)

    async def record(self, users: tuple[int, ...] | None) -> None:
        """Note who was notified (None: everyone), so a daemon taking the call over after
        this one died does not notify them again."""
        if self._claims is not None:
            await self._claims.record(self.key, users)

    async def recorded(self) -> tuple[frozenset[int], bool]:
        """Who a previous owner notified, and whether it notified everyone (read with the
        claim itself)."""
        names = self._notified
        return frozenset(int(n) for n in names if n.isdigit()), EVERYONE in names

    async def release(self) -> None:
        """Give the call up unfinished: another daemon may claim it at once."""
        if self._claims is not None:
            try:
                await self._claims.run(self._claims.release_script, self.key, self._token)
            finally:
                self._claims.drop(self.key, self._token)


class Claims:
    def __init__(
        self,
        link: ClusterLink,
        *,
        ttl: float = CLAIM_TTL,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._link = link
        self.ttl = ttl
        redis = link.redis
        # Guarded (link.GUARD): after a flush a claim or a watched one would read as free.
        self._claim = redis.register_script(GUARD + CLAIM)
        self._tick = redis.register_script(GUARD + TICK)
        self.finish_script = redis.register_script(FINISH)
        self._record = redis.register_script(RECORD)
        self.release_script = redis.register_script(RELEASE)
        #: Held claims (key: our token) and watched ones (key: how many watch it).
        self._held: dict[str, str] = {}
        self._watched: Counter[str] = Counter()
        #: What the next tick read of the watched claims, for every watcher at once.
        self._news: asyncio.Future[Mapping[str, int]] | None = None
        self._ticker = Ticker(self._step, "cluster-claims", sleep)
        self.ticks = 0
        self.failed_ticks = 0
        #: Held claims a tick found gone (lapsed and taken over, or Redis emptied).
        self.lost = 0

    @property
    def holding(self) -> int:
        """Claims this daemon holds (and renews) in Redis now."""
        return len(self._held)

    @property
    def watching(self) -> int:
        """Claims of other daemons this daemon watches now."""
        return len(self._watched)

    def start(self) -> None:
        """Start the ticker (renewing and watching every claim); :meth:`stop` ends it."""
        self._ticker.start()

    async def stop(self) -> None:
        """End the ticker; watchers give up at once (held claims are left to their owners)."""
        await self._ticker.stop()
        self._tell({})

    def key(self, call_id: str, purpose: str) -> str:
        return self._link.key("claim", purpose, call_id)

    def holds(self, key: str, token: str) -> bool:
        return self._held.get(key) == token

    def drop(self, key: str, token: str) -> None:
        """No longer renew ``key`` (finished or released)."""
        if self._held.get(key) == token:
            del self._held[key]

    async def claim(self, call_id: str, purpose: str) -> Claim | None:
        """One try: the claim, or None when another daemon holds it or has finished it."""
        return (await self._try(self.key(call_id, purpose))).claim

    async def try_claim(self, call_id: str, purpose: str) -> Attempt:
        """One try, and what stood in the way when it failed."""
        return await self._try(self.key(call_id, purpose))

    async def _try(self, key: str) -> Attempt:
        if not self._link.ok:
            return Attempt(Claim(None, key, ""), FREE)
        token = f"{self._link.node}:{uuid.uuid4().hex}"
        ttl_ms = round(self.ttl * 1000)
        keys = [key, sent_key(key)]
        try:
            answer = await self._link.call_bounded(
                lambda: self._link.guarded(self._claim, keys, [token, ttl_ms])
            )
        except FAILURES:
            return Attempt(Claim(None, key, ""), FREE)
        state, *notified = answer
        if int(state) != FREE:  # finished: notified is the marker, "done:NODE:HEX"
            marker = _text(notified[0]) if notified else ""
            return Attempt(None, int(state), marker[5:].rpartition(":")[0])
        self._held[key] = token
        names = frozenset(_text(n) for n in notified)
        return Attempt(Claim(self, key, token, names), FREE)

    async def wait_claim(
        self, call_id: str, purpose: str, *, until: Callable[[], bool]
    ) -> Claim | None:
        """Claim, or watch the owner until it finishes (None), dies (we take over), or
        ``until()`` says the call no longer needs anyone (None)."""
        key = self.key(call_id, purpose)
        while True:
            won, state, _ = await self._try(key)
            if won is not None:
                return won
            if state == FINISHED or until() or await self._watch(key, until) != FREE:
                return None

    async def _watch(self, key: str, until: Callable[[], bool]) -> int:
        """Tick by tick until ``key`` is free (FREE: try again), finished, or ``until()``."""
        self.start()  # (started by the owner already; a watcher without a ticker waits forever)
        self._watched[key] += 1
        try:
            while not self._ticker.stopped:
                if self._news is None:
                    self._news = asyncio.get_running_loop().create_future()
                # shielded: a watcher cancelled must not cancel the news for the others
                state = (await asyncio.shield(self._news)).get(key, HELD)
                if state != HELD:
                    return state
                if until():
                    return HELD
            return STOPPED
        finally:
            self._watched[key] -= 1
            if not self._watched[key]:
                del self._watched[key]

    def _tell(self, states: Mapping[str, int]) -> None:
        news, self._news = self._news, None
        if news is not None and not news.done():
            news.set_result(states)

    async def _step(self) -> float:
        return self.ttl / 3 if await self.tick() else self.ttl / 6

    async def tick(self) -> bool:
        """Renew every held claim and read every watched one, then wake the watchers; False
        when Redis did not answer (logged; the link's probe decides whether it is lost)."""
        if not self._link.ok:  # alone: every watcher claims locally
            self._tell(dict.fromkeys(self._watched, FREE))
            return True
        states: dict[str, int] = {}
        try:
            for keys, tokens in self._chunks():
                ttl_ms = round(self.ttl * 1000)
                args: list[int | str] = [ttl_ms, len(tokens), *tokens]
                answer = await self._link.guarded(self._tick, keys, args)
                for index, (key, state) in enumerate(zip(keys, answer, strict=True)):
                    if index >= len(tokens):
                        states[key] = int(state)
                    elif not state and self._held.get(key) == tokens[index]:
                        del self._held[key]
                        self.lost += 1
        except FAILURES as exc:
            self.failed_ticks += 1
            if isinstance(exc, ResponseError):
                self._link.failed(exc)  # refused (full, a lost epoch): degraded at once, logged
                return False
            log.warning(
                "cluster.claims_tick_failed",
                reason=f"{type(exc).__name__}: {exc}"[:200],
                node=self._link.node,
                held=len(self._held),
                watched=len(self._watched),
            )
            return False
        finally:
            self.ticks += 1
            self._tell(states)
        return True

    def _chunks(self) -> Iterator[tuple[list[str], list[str]]]:
        """(keys, tokens of the first ones: the held claims), TICK_CHUNK keys at a time."""
        held = list(self._held.items())
        watched = [key for key in self._watched if key not in self._held]
        for start in range(0, len(held) + len(watched), TICK_CHUNK):
            part = held[start : start + TICK_CHUNK]
            rest = TICK_CHUNK - len(part)
            first = max(0, start - len(held))
            keys = [key for key, _ in part] + watched[first : first + rest]
            yield keys, [token for _, token in part]

    async def run(self, script: object, key: str, token: str, *args: float) -> bool:
        """Run one of the claim scripts; False when Redis is lost."""
        if not self._link.ok:
            return False
        extra = [round(arg * 1000) for arg in args] or [round(self.ttl * 1000)]
        try:
            result = await self._link.call_bounded(
                lambda: script(keys=[key], args=[token, *extra])  # type: ignore[operator]
            )
        except FAILURES:
            return False
        return bool(result)

    async def record(self, key: str, users: tuple[int, ...] | None) -> None:
        if not self._link.ok:
            return
        members = [str(user) for user in users] if users is not None else [EVERYONE]
        sent = sent_key(key)
        keep_ms = round(DONE_KEEP * 1000)
        try:
            await self._link.call_bounded(
                lambda: self._record(keys=[sent], args=[keep_ms, *members])
            )
        except FAILURES:
            return


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sent_key(key: str) -> str:
    """Where a claim's owners note who they notified."""
    return f"{key}:sent"
