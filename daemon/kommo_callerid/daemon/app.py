"""Wiring and lifecycle: build the clients, run intake and housekeeping, stop cleanly.

Life in named steps, as in uvicorn's server: ``startup`` (clients, tasks, READY=1),
``main_loop`` (wait for a stop request or a fatal start-up error), ``shutdown`` (stop intake,
let in-flight notifications finish for up to ``shutdown_timeout``, log the counters).
Signal handlers only set an event: SIGTERM/SIGINT the stop event, SIGHUP the reload event
(the reload itself is :mod:`kommo_callerid.daemon.reload`, run as an owned task).

Size: the lifecycle in named steps (startup, main loop, shutdown) and the views it feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from kommo_callerid import __version__
from kommo_callerid.calls.pbx_calls import PbxCallTrackers, PbxOutcomeTrackers
from kommo_callerid.clicktocall.tokens import LEEWAY
from kommo_callerid.cluster.link import ClusterStartError
from kommo_callerid.cluster.replay import SharedReplayGuard
from kommo_callerid.core.config import Config, LogConfig
from kommo_callerid.core.hot_path import HotPath
from kommo_callerid.core.models import (
    AmiLoginError,
    ChannelEvent,
    ChannelEventKind,
    FinishedCall,
    KommoAuthError,
    KommoError,
)
from kommo_callerid.daemon.cluster import Cluster
from kommo_callerid.daemon.journal import open_journal
from kommo_callerid.daemon.links import PbxLinks
from kommo_callerid.daemon.memory import release_after_floods
from kommo_callerid.daemon.notifier import CallNotifier, TaskOwner
from kommo_callerid.daemon.outcomes import DebugJournalSink, JournalSink
from kommo_callerid.daemon.phonebook import MirrorFirst, PhoneBookParts, open_phonebook
from kommo_callerid.daemon.public import PublicEndpoint
from kommo_callerid.daemon.recordings import Recordings, recordings_view
from kommo_callerid.daemon.reload import ConfigReloader
from kommo_callerid.daemon.systemd import SystemdNotifier
from kommo_callerid.journal.clock import SteadyClock
from kommo_callerid.journal.lock import OutboxHeld
from kommo_callerid.journal.sender import JournalSender
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.phonebook.store import MirrorError
from kommo_callerid.recordings.keys import SigningKeyError
from kommo_callerid.serving.descriptors import raise_descriptor_limit
from kommo_callerid.serving.guard import ListenerSnapshot
from kommo_callerid.web.callerid import CallerIdService
from kommo_callerid.web.metrics import MetricsExporter
from kommo_callerid.web.server import Health, HttpServer
from kommo_callerid.web.stats import PhonebookStats, StatsView, log_fields

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3

#: Events waiting for the call tracker; beyond this AMI events are dropped and counted.
EVENT_QUEUE_SIZE = 10_000
#: Of ``shutdown_timeout``, the share kept for cancelling what is left and closing the
#: clients (at most STOP_RESERVE_MAX s), so the whole stop fits in it at any backlog.
STOP_RESERVE_SHARE = 0.2
STOP_RESERVE_MAX = 1.0
STATS_INTERVAL = 60.0
#: Events handled before the intake lets other tasks run: more than one TCP read brings
#: (256 KiB, some 500-750 events), so the queue still drains between reads.
CONSUME_BATCH = 2048
#: Below this many waiting events a new call ends the intake's batch early (less than one
#: TCP read brings): the call goes first. A longer backlog is handled in whole batches, or
#: the reader, adding a read's worth each turn, would outrun the intake and fill the queue.
SHORT_BACKLOG = 256


@dataclass
class _Running:
    """What startup builds and shutdown takes apart."""

    queue: asyncio.Queue[ChannelEvent]
    tracker: PbxCallTrackers
    notifier: CallNotifier
    #: One supervised AMI link per PBX.
    links: PbxLinks
    call_tasks: TaskOwner
    kommo: KommoClient
    #: What each call was, when it ends (for the call journal).
    outcomes: PbxOutcomeTrackers
    background: list[asyncio.Task[None]] = field(default_factory=list)
    events: int = 0
    #: ``loop.time()`` of the last AMI event taken off the queue (for /healthz).
    last_event_at: float | None = None
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    callerid: CallerIdService | None = None
    http: HttpServer | None = None
    cluster: Cluster | None = None
    #: The call journal's sender; None when ``[journal] enabled`` is false.
    journal: JournalSender | None = None
    #: The phone book (mirror, sync) and the lookup in front of Kommo; None when disabled.
    phonebook: PhoneBookParts | None = None
    front: MirrorFirst | None = None
    #: ``[public]``: the endpoint Kommo's web UI reaches (click-to-call).
    public: PublicEndpoint | None = None


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        stop: asyncio.Event | None = None,
        systemd: SystemdNotifier | None = None,
        journal_sink: JournalSink | None = None,
        on_secret: Callable[[str], None] | None = None,
        config_path: Path | None = None,
        relog: Callable[[LogConfig], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        #: The running configuration; SIGHUP replaces it (see :meth:`_apply_config`).
        self.config = config
        #: Re-read on SIGHUP; ``relog`` applies a reloaded ``[log]`` to the log chain.
        self._config_path = config_path
        self._relog = relog
        self.reload = asyncio.Event()
        #: Learns the OAuth tokens as they rotate, so the log chain can scrub them.
        self._on_secret = on_secret
        self.stop = stop or asyncio.Event()
        self.systemd = systemd or SystemdNotifier()
        #: Where finished calls go; None: the call journal's outbox when ``[journal] enabled``,
        #: else a debug line.
        self.journal_sink = journal_sink
        self._debug_sink = DebugJournalSink()
        self._running: _Running | None = None
        #: Signed recording links (the journal) and their server (the public listener's
        #: routes: ``recordings.routes()``); built by :meth:`serve`.
        self.recordings: Recordings | None = None
        #: Unix time of the moment (a call's start); ages and waits use the monotonic clock.
        self._wall_clock = wall_clock
        #: Calls between their lookup and their notification: the journal lets them pass.
        self.hot_path = HotPath()

    @property
    def ami_connected(self) -> bool:
        return self._running is not None and self._running.links.connected

    @property
    def phonebook_ready(self) -> bool:
        """The phone book's first full pass is done (True without ``[phonebook]``)."""
        running = self._running
        parts = running.phonebook if running is not None else None
        return parts is None or parts.book.complete

    @property
    def http_port(self) -> int | None:
        """The bound port of the HTTP endpoint (``listen`` may ask for port 0), or None."""
        running = self._running
        return running.http.port if running is not None and running.http is not None else None

    @property
    def public_port(self) -> int | None:
        """The bound port of the public endpoint (``[public] listen``), or None."""
        running = self._running
        return running.public.port if running is not None and running.public else None

    def table_sizes(self) -> dict[str, int]:
        """The size of every internal table (benchmarks, debugging); empty when not running."""
        running = self._running
        if running is None:
            return {}
        return {
            "queue": running.queue.qsize(),
            "tracker": len(running.tracker),
            "outcomes": len(running.outcomes),
            "active": running.notifier.active_calls,
            "seen": running.notifier.seen_calls,
            "pending": running.notifier.pending_calls,
            "tasks": len(running.call_tasks),
            **running.kommo.table_sizes(),
            "journal_pending": running.journal.pending if running.journal else 0,
            "journal_unwritten": running.journal.unwritten if running.journal else 0,
        }

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)

    async def serve(self) -> int:
        # systemd's soft limit is 1,024; the listeners take a share of what this gives.
        open_files = raise_descriptor_limit()
        async with AsyncExitStack() as stack:
            cluster = await self._connect_cluster()
            if cluster is False:
                return EXIT_CONFIG
            extra = cluster.kommo_parts() if cluster is not None else {}
            if cluster is not None:
                stack.push_async_callback(cluster.close)
            kommo = await stack.enter_async_context(
                KommoClient(
                    self.config.kommo, self.config.cache, on_secret=self._on_secret, **extra
                )
            )
            if not await self._credentials_usable(kommo):
                return EXIT_CONFIG
            # One clock for the journal's records and the recordings' grace after them: a
            # step of the wall clock moves neither (see journal/clock.py).
            steady = SteadyClock(self._wall_clock)
            try:
                self.recordings = Recordings(
                    self.config, clock=self._wall_clock, journal_clock=steady
                )
            except SigningKeyError as exc:
                log.error("recordings.unusable", detail=str(exc))
                return EXIT_CONFIG
            try:
                gate = cluster.journal_calls if cluster is not None else None
                journal = await open_journal(
                    self.config,
                    kommo,
                    self.recordings,
                    gate=gate,
                    clock=steady,
                    hot_path=self.hot_path,
                )
            except OutboxHeld as exc:  # any other journal problem leaves caller ID running
                log.error("journal.unusable", detail=str(exc))
                return EXIT_CONFIG
            if journal is not None:  # closed by _shutdown; this covers a failed start
                stack.push_async_callback(journal.close, self.config.daemon.shutdown_timeout)
            try:
                phonebook = await open_phonebook(
                    self.config, kommo, link=cluster.link if cluster else None
                )
            except MirrorError as exc:
                log.error("phonebook.error", detail=str(exc), retry_in=None)
                return EXIT_CONFIG
            if phonebook is not None:
                stack.push_async_callback(phonebook.book.close)
            running = await self._startup(kommo, cluster, journal, open_files, phonebook)
            if running is None:
                return EXIT_CONFIG  # http.listen_failed says why
            exit_code = await self._main_loop(running)
            await self._shutdown(running)
        return exit_code

    async def _connect_cluster(self) -> Cluster | Literal[False] | None:
        """The cluster when ``[cluster]`` is set; False (logged) when Redis is unusable."""
        if not self.config.cluster.enabled:
            return None
        try:
            return await Cluster.connect(self.config)
        except ClusterStartError as exc:
            log.error("cluster.connect_failed", detail=str(exc))
            return False

    @staticmethod
    async def _credentials_usable(kommo: KommoClient) -> bool:
        """False when Kommo refuses our OAuth grant (logged): a restart cannot fix that."""
        try:
            await kommo.ensure_credentials()
        except KommoAuthError:
            return False
        except KommoError:
            pass  # Kommo unreachable for now: the calls' retries will cope
        return True

    def record_finished_call(self, call: FinishedCall) -> None:
        """Hand one finished call to the journal sink (what call intake does at a call's end)."""
        self._journal(call)

    def _sink(self) -> JournalSink:
        if self.journal_sink is not None:
            return self.journal_sink
        running = self._running
        if running is not None and running.journal is not None:
            return running.journal
        return self._debug_sink

    async def _startup(
        self,
        kommo: KommoClient,
        cluster: Cluster | None,
        journal: JournalSender | None,
        open_files: int,
        phonebook: PhoneBookParts | None = None,
    ) -> _Running | None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        queue: asyncio.Queue[ChannelEvent] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        call_tasks = TaskOwner()
        front = (
            MirrorFirst(kommo, phonebook.book, cfg.phonebook, clock=loop.time)
            if phonebook is not None
            else None
        )
        running = _Running(
            queue=queue,
            tracker=PbxCallTrackers.build(
                ((pbx.name, pbx.inbound_contexts) for pbx in cfg.pbxs),
                cfg.calls.min_digits,
                cfg.calls.default_region,
            ),
            notifier=CallNotifier(
                front or kommo,
                cfg.notify,
                cfg.calls,
                call_tasks,
                loop.time,
                claims=cluster.claims if cluster else None,
                hot_path=self.hot_path,
            ),
            links=PbxLinks(cfg.pbxs, queue, on_state=self._ami_state_changed, clock=loop.time),
            call_tasks=call_tasks,
            kommo=kommo,
            outcomes=PbxOutcomeTrackers.build(
                ((pbx.name, pbx.inbound_contexts, pbx.outbound_contexts) for pbx in cfg.pbxs),
                cfg.calls.min_digits,
                cfg.calls.default_region,
            ),  # loop time: _at_wall_time makes a finished call's start Unix time
            cluster=cluster,
            journal=journal,
            phonebook=phonebook,
            front=front,
        )
        self._running = running
        if cluster is not None:
            self.journal_sink = cluster.journal_sink(self._sink(), call_tasks)
        if cfg.http.listen and not await self._start_http(running):
            self._running = None
            return None
        if cfg.public.listen and not await self._start_public(running):
            await self._stop_http(running)
            self._running = None
            return None
        running.background = [
            *running.links.start(),
            asyncio.create_task(self._consume(running), name="call-intake"),
            asyncio.create_task(self._housekeeping(running), name="housekeeping"),
            asyncio.create_task(
                release_after_floods(lambda: running.notifier.flooded_at), name="memory-release"
            ),
            asyncio.create_task(self._reloader(running).run(self.reload), name="config-reload"),
        ]
        if phonebook is not None:  # cancelled with the other background tasks
            running.background.append(asyncio.create_task(phonebook.run(), name="phonebook-sync"))
        if cluster is not None:
            running.background.append(asyncio.create_task(cluster.link.watch(), name="cluster"))
            cluster.claims.start()  # stopped at shutdown (or by cluster.close)
            cluster.limiter.start()  # its beat; stopped by cluster.close, after the drain
        if journal is not None:
            journal.start()  # owned by the sender; stopped by journal.close on the way out
        log.info(
            "daemon.started",
            version=__version__,
            ami=running.links.where(),
            kommo=cfg.kommo.base_url,
            inbound_contexts=list(cfg.calls.inbound_contexts),
            open_files_limit=open_files,
        )
        self.systemd.ready("running; AMI connecting")
        return running

    def _reloader(self, running: _Running) -> ConfigReloader:
        return ConfigReloader(
            self._config_path, lambda: self.config, lambda new: self._apply_config(running, new)
        )

    def _apply_config(self, running: _Running, config: Config) -> None:
        """SIGHUP: what may change without dropping a link (the reload plan kept the rest)."""
        old, self.config = self.config, config
        calls = config.calls
        running.notifier.reconfigure(config.notify, calls)
        pbxs = config.pbxs  # each PBX's contexts: its own, or the reloaded [calls] ones
        running.tracker.reconfigure(
            ((pbx.name, pbx.inbound_contexts) for pbx in pbxs),
            calls.min_digits,
            calls.default_region,
        )
        running.outcomes.reconfigure(
            ((pbx.name, pbx.inbound_contexts, pbx.outbound_contexts) for pbx in pbxs),
            calls.min_digits,
            calls.default_region,
        )
        if running.journal is not None:  # [journal] database needs a restart (the reload plan)
            running.journal.reconfigure(config.journal, config.notify)
        if running.callerid is not None:
            running.callerid.reconfigure(calls)
        if running.phonebook is not None and running.front is not None:  # intervals, trust
            running.phonebook.sync.reconfigure(config.phonebook)
            running.front.reconfigure(config.phonebook)
        if self.recordings is not None:
            self.recordings.reconfigure(config)
        if running.public is not None:  # [clicktocall], origins, the TLS files (re-read)
            running.public.reconfigure(config)
        if config.log != old.log and self._relog is not None:
            self._relog(config.log)

    async def _main_loop(self, running: _Running) -> int:
        stop_waiter = asyncio.create_task(self.stop.wait(), name="stop-waiter")
        try:
            await asyncio.wait(
                [stop_waiter, *running.background], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_waiter.cancel()
        for task in running.background:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return self._fatal(task.exception())
        return EXIT_OK

    @staticmethod
    def _fatal(exc: BaseException | None) -> int:
        if isinstance(exc, AmiLoginError):
            return EXIT_CONFIG  # ami.login_failed already says why
        log.error("daemon.crashed", exc_info=exc)
        return EXIT_FAILURE

    async def _shutdown(self, running: _Running) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.config.daemon.shutdown_timeout
        grace_ends = loop.time() + timeout - min(STOP_RESERVE_MAX, STOP_RESERVE_SHARE * timeout)
        self.systemd.stopping()
        await self._stop_http(running)
        if running.public is not None:
            await running.public.stop()
        for task in running.background:
            task.cancel()
        await asyncio.gather(*running.background, return_exceptions=True)
        running.notifier.hand_back_calls()
        if running.cluster is not None:  # the calls' watchers give up now, not at the next tick
            await running.cluster.claims.stop()
        in_flight = len(running.call_tasks)
        grace = max(0.0, grace_ends - loop.time())
        journal = running.journal.close(grace) if running.journal else asyncio.sleep(0)
        cancelled, _ = await asyncio.gather(running.call_tasks.drain(grace), journal)
        log.info(
            "daemon.stopped",
            in_flight_at_stop=in_flight,
            in_flight_cancelled=cancelled,
            **self._counters(running),
            **({"journal_unwritten": running.journal.lost} if running.journal else {}),
        )
        self._running = None

    async def _consume(self, running: _Running) -> None:
        tracker, notifier, queue = running.tracker, running.notifier, running.queue
        outcomes = running.outcomes
        while not self.stop.is_set():
            event = await queue.get()
            # A batch: what waits now, up to CONSUME_BATCH events; then the notifier begins the
            # batch's calls, and the stop request, the HTTP endpoint and the notifications get
            # their turn (queue.get() does not yield while events wait).
            taken = 1
            while True:
                running.events += 1
                if event.kind is not ChannelEventKind.LINK_LOST:
                    running.last_event_at = event.received_at
                for decision in tracker.feed(event):
                    notifier.handle(decision)
                # A new call ends the batch when little waits behind it (and not in a flood):
                # it is begun at once, before even the outcome tracker sees its channel, so its
                # lookup and notification go out before the rest (its legs, other calls'
                # hangups and their journal entries). With a backlog, batches stay whole.
                call_first = notifier.calls_to_begin and queue.qsize() < SHORT_BACKLOG
                if call_first:
                    notifier.end_batch()
                    # The call's lookup (a warm one writes its notification) runs now; the
                    # outcome tracker's turn on this channel comes after, off its path.
                    await asyncio.sleep(0)
                for call in outcomes.feed(event):
                    self._journal(self._at_wall_time(call))
                if call_first or taken >= CONSUME_BATCH or queue.empty():
                    break
                event = queue.get_nowait()
                taken += 1
            notifier.end_batch()
            await asyncio.sleep(0)

    def _at_wall_time(self, call: FinishedCall) -> FinishedCall:
        """The outcome trackers count in loop (monotonic) time; the call's start in Unix time
        is the wall clock of this moment less the seconds since. An offset taken at start-up
        would keep a clock step's error until a restart (a box booted 3 years behind sent
        3-year-old dates after NTP corrected it)."""
        elapsed = asyncio.get_running_loop().time() - call.started_at
        return replace(call, started_at=self._wall_clock() - elapsed)

    def _journal(self, call: FinishedCall) -> None:
        try:
            self._sink().record(call)
        except Exception:  # a sink's bug must not stop call intake
            log.exception("journal.record_failed", call_id=call.call_id)

    async def _housekeeping(self, running: _Running) -> None:
        loop = asyncio.get_running_loop()
        interval = self.systemd.watchdog_interval or STATS_INTERVAL
        next_stats = loop.time() + STATS_INTERVAL
        while True:
            await asyncio.sleep(min(interval, STATS_INTERVAL))
            self.systemd.watchdog()
            if loop.time() >= next_stats:
                next_stats += STATS_INTERVAL
                for decision in running.tracker.expire(loop.time()):
                    running.notifier.handle(decision)
                running.notifier.end_batch()
                running.notifier.log_shed()
                running.outcomes.expire(loop.time())
                await self._refresh_credentials(running)
                counters = self._counters(running)
                log.info("stats", **counters)
                self.systemd.status(self._status_line(counters))

    @staticmethod
    async def _refresh_credentials(running: _Running) -> None:
        with contextlib.suppress(KommoError):  # logged; the requests themselves retry or report
            await running.kommo.ensure_credentials()

    def _ami_state_changed(self, connected: bool) -> None:
        if self._running is None:
            return
        self.systemd.status(self._status_line(self._counters(self._running)))

    def _counters(self, running: _Running) -> dict[str, Any]:
        # as_dict first: a counter the notifier adds later still reaches the stats line.
        return {**running.notifier.stats.as_dict(), **log_fields(self._stats_view(running))}

    def _stats_view(self, running: _Running) -> StatsView:
        notifier, kommo = running.notifier.stats, running.kommo.stats
        callerid = running.callerid
        return StatsView(
            ami_connected=running.links.connected,
            ami_reconnects=running.links.reconnects,
            ami_events=running.links.totals(),
            events_processed=running.events,
            queue_depth=running.queue.qsize(),
            tracked_calls=len(running.tracker),
            active_calls=running.notifier.active_calls,
            in_flight=len(running.call_tasks),
            calls_detected=notifier.calls_incoming,
            calls_skipped={str(reason): n for reason, n in notifier.skipped.items()},
            notifications_sent=notifier.notifications_sent,
            notifications_failed=kommo.notifications_failed,
            notifications_dropped=dict(notifier.dropped),
            notify_latency=notifier.notify_latency,
            lookups=kommo.lookups,
            lookup_cache_hits=kommo.cache_hits,
            lookups_failed=kommo.lookups_failed,
            lookup_latency=kommo.lookup_seconds,
            kommo_requests=dict(kommo.requests),
            cache_entries=running.kommo.cache_size,
            callerid_answers={str(k): n for k, n in callerid.answers.items()} if callerid else {},
            callerid_background=callerid.background_lookups if callerid else 0,
            started_at=running.started_at,
            cluster_up=running.cluster.link.ok if running.cluster else None,
            kommo_waiting=running.kommo.table_sizes().get("limiter_waiting", 0),
            **self._journal_view(running),
            **recordings_view(self.recordings),
            pbx_links=running.links.stats() if running.links.named else (),
            phonebook=self._phonebook_view(running),
            listeners=_listener_view(running),
        )

    def _phonebook_view(self, running: _Running) -> PhonebookStats | None:
        parts, front = running.phonebook, running.front
        if parts is None or front is None:
            return None
        return PhonebookStats(
            entries=dict(parts.book.counts),
            age_seconds=parts.book.age(),
            sync_interval=self.config.phonebook.sync_interval,
            lookups=dict(front.sources),
            sync_requests=parts.sync.stats.requests,
            sync_failures=parts.sync.stats.failures,
        )

    @staticmethod
    def _journal_view(running: _Running) -> dict[str, Any]:
        journal = running.journal
        if journal is None:
            return {}
        return {
            "journal_enabled": True,
            "journal_recorded": journal.stats.recorded,
            "journal_pending": journal.pending,
            "journal_sent": journal.stats.sent,
            "journal_dropped": dict(journal.stats.dropped),
            "journal_untracked": running.outcomes.untracked(),
        }

    async def _start_http(self, running: _Running) -> bool:
        """Bind before READY=1, so a monitor that sees the service up can scrape it."""
        running.callerid = CallerIdService(
            running.front or running.kommo, self.config.calls, self.config.http
        )
        running.http = HttpServer(
            self.config.http,
            health=lambda: self._health(running),
            metrics=MetricsExporter(lambda: self._stats_view(running)),
            callerid=running.callerid,
        )
        try:
            await running.http.start()
        except OSError as exc:  # address in use, not on this host, or a privileged port
            log.error("http.listen_failed", listen=self.config.http.listen, reason=str(exc))
            await running.callerid.close()
            return False
        return True

    async def _start_public(self, running: _Running) -> bool:
        cluster = running.cluster
        shared = SharedReplayGuard(cluster.link, keep_after=LEEWAY) if cluster else None
        recordings = self.recordings.routes() if self.recordings is not None else ()
        running.public = PublicEndpoint(
            self.config,
            running.kommo,
            running.links,
            running.outcomes,
            shared,
            extra_routes=recordings,
        )
        return await running.public.start()

    async def _stop_http(self, running: _Running) -> None:
        if running.http is not None:
            await running.http.stop()
        if running.callerid is not None:
            await running.callerid.close()

    def _health(self, running: _Running) -> Health:
        now = asyncio.get_running_loop().time()
        last = running.last_event_at
        pbx = {"pbx": running.links.states()} if running.links.named else {}
        journal = running.journal
        return Health(
            ami_connected=running.links.connected,
            kommo=str(running.kommo.health),
            journal="unusable" if journal is not None and not journal.usable else "ok",
            facts={
                **pbx,
                "version": __version__,
                "uptime_seconds": round(time.monotonic() - running.started_monotonic, 1),
                "last_event_age_seconds": None if last is None else round(now - last, 1),
                "ami_reconnects": running.links.reconnects,
                "queue_depth": running.queue.qsize(),
                **({"cluster": running.cluster.health} if running.cluster else {}),
                "journal_pending": journal.pending if journal else None,
                "journal_unwritten": journal.unwritten if journal else None,
                **self._phonebook_health(running),
            },
        )

    @staticmethod
    def _phonebook_health(running: _Running) -> dict[str, Any]:
        if running.phonebook is None:
            return {}
        book = running.phonebook.book
        age = book.age()
        return {
            "phonebook": {
                "entries": book.entries,
                "age_seconds": None if age is None else round(age, 1),
            }
        }

    @staticmethod
    def _status_line(counters: dict[str, Any]) -> str:
        ami = "connected" if counters["ami_connected"] else "disconnected"
        if "pbx" in counters:  # several PBXs: each one's state
            ami = ", ".join(
                f"{name} {'connected' if link['connected'] else 'disconnected'}"
                for name, link in counters["pbx"].items()
            )
        return (
            f"AMI {ami}; calls {counters['calls_incoming']}; "
            f"notified {counters['notifications_sent']}; "
            f"dropped {counters['notifications_dropped']}"
        )


def _listener_view(running: _Running) -> tuple[ListenerSnapshot, ...]:
    """The bounded listeners running, local first (``/metrics``, label ``listener``)."""
    public = running.public.server if running.public is not None else None
    guards = (running.http.guard if running.http else None, public.guard if public else None)
    return tuple(guard.snapshot() for guard in guards if guard is not None)
