"""The AMI side: one Asterisk Manager session per :class:`AmiClient`, channel events into a queue.

The link is panoramisk's, cut down to one session in :mod:`.protocol` (which lists the
panoramisk 1.4 faults it works around). This module turns it into typed results: session info
or :class:`AmiLoginError` / :class:`AmiConnectionError`, :class:`~.models.ChannelEvent` on the
queue, event counters, and the reason the link ended. It never reconnects or pings on its own:
the supervisor owns reconnects and the watchdog (:meth:`AmiClient.send_action` with a Ping).
The events are built in :mod:`.events`; a full queue stalls the reader for a moment before it
sheds (:mod:`.pacing`).

Size: one AMI session end to end (connect, login, filters, read loop, actions); split when it grows.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

import structlog

from kommo_callerid.ami.events import HEADERS, KINDS, channel_event, is_recording_file
from kommo_callerid.ami.pacing import ReadPacer
from kommo_callerid.ami.protocol import (
    MAX_MESSAGE_BYTES,
    Discard,
    Flow,
    SessionManager,
    all_headers,
    first_headers,
)
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import (
    AmiActionRefused,
    AmiConnectionError,
    AmiCounters,
    AmiLoginError,
    AmiSessionInfo,
    ChannelEvent,
    ChannelEventKind,
)

__all__ = ["AmiActionRefused", "AmiClient", "AmiConnectionError", "AmiCounters", "AmiLoginError"]

log = structlog.get_logger(__name__)

_CLOSE_GRACE = 2.0  # seconds a closing link may take to flush before it is aborted
_WARN_EVERY = 1000  # drops and bad events are logged on the 1st, 1001st, ... occurrence
#: Hangups remembered while a channel list is on its way (see :meth:`AmiClient.list_channels`).
_MAX_HANGUPS_WHILE_LISTING = 10_000
_HANGUP = ChannelEventKind.HANGUP
_NEWCHANNEL = ChannelEventKind.NEWCHANNEL
#: A call's first channel with fewer events than this waiting is urgent: the rest of the TCP
#: read waits until the call's notification is on its way. A longer backlog is a flood: the
#: reader then keeps reading whole reads (the intake handles whole batches anyway).
_URGENT_BELOW = 256
_VARSET = ChannelEventKind.RECORDING_FILE
#: What a session reads from its start. VarSet only once Asterisk filters it for us
#: (:meth:`AmiClient.read_recording_files`): unfiltered, a dialplan sets dozens of variables
#: per call, each a VarSet that would be parsed only to be dropped.
_READ_AT_ONCE = [kind.value for kind in KINDS.values() if kind is not _VARSET]
#: VarSets of other variables a session reads before it stops reading VarSets.
_MAX_UNUSED_VARSETS = 20

T = TypeVar("T")


class AmiClient:
    """One AMI session: connect and log in, deliver channel events, tell how the link ended.

    It never reconnects; the next session is a new AmiClient.
    """

    def __init__(
        self,
        config: AmiConfig,
        queue: asyncio.Queue[ChannelEvent],
        *,
        clock: Callable[[], float] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pbx: str = "",
    ) -> None:
        self._config = config
        self._queue = queue
        #: Stamped on every event: the same Linkedid on two PBXs is two calls.
        self._pbx = pbx
        #: None: the running loop's ``time``, bound once at connect (it is read per event).
        self._clock = clock
        self._ssl_context = ssl_context
        self._counters = AmiCounters()
        self._link: SessionManager | None = None
        self._lost: asyncio.Future[str] | None = None
        self._started = False
        self._closing = False
        self._logged_in = False
        #: Uniqueids hung up while a channel list is on its way; None when none is.
        self._hung_up: set[str] | None = None
        #: VarSets of other variables than MixMonitor's (counted as ignored).
        self._unused_varsets = 0
        #: Stalls the reader while the intake is behind (set at connect).
        self._pacer: ReadPacer | None = None

    @property
    def counters(self) -> AmiCounters:
        """A snapshot of the event counters."""
        ignored = (self._link.ignored if self._link else 0) + self._unused_varsets
        return replace(self._counters, ignored=ignored)

    @property
    def events_received(self) -> int:
        """Channel events (every ChannelEventKind) read in this session."""
        return self._counters.received

    @property
    def connected(self) -> bool:
        """Logged in and the link is up."""
        return self._logged_in and self._lost is not None and not self._lost.done()

    @property
    def last_received_at(self) -> float | None:
        """``loop.time()`` when the server last sent anything (for a watchdog)."""
        return self._link.last_received_at if self._link else None

    async def connect(self) -> AmiSessionInfo:
        """Open the link, read the banner, log in; all within ``connect_timeout``."""
        if self._started:
            raise RuntimeError("an AmiClient serves one session; make a new one")
        self._started = True
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        self._link = link = SessionManager(
            loop,
            self._config,
            self._on_event,
            self._on_fault,
            self._mark_lost,
            on_discard=self._on_discard,
            events=_READ_AT_ONCE,
            headers=HEADERS,
        )
        self._pacer = ReadPacer(self._queue.maxsize, self._queue.qsize, link.unstall)
        timeout = self._config.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                version = await self._open_and_login(loop, link)
        except TimeoutError:
            reason = f"no answer from {self._where()} within {timeout:g} s"
            self._give_up(link, reason)
            raise AmiConnectionError(reason) from None
        except (AmiConnectionError, AmiLoginError) as exc:
            self._give_up(link, str(exc))
            raise
        except BaseException:  # cancelled: the link must not outlive the attempt
            self._give_up(link, "connect cancelled")
            raise
        self._logged_in = True
        return AmiSessionInfo(self._config.host, self._config.port, version)

    def read_recording_files(self) -> None:
        """Asterisk accepted the Filter for ``MIXMONITOR_FILENAME``: read its VarSets now."""
        if self._link is not None:
            self._link.want(_VARSET.value)

    async def send_action(
        self,
        action: Mapping[str, str],
        timeout: float,  # each caller (Ping watchdog, check) has its own
    ) -> dict[str, str]:
        """Send an action; the headers of its first response. TimeoutError when unanswered."""
        link = self._live_link()
        return first_headers(await self._wait(link.submit(action), link, timeout))

    async def request(self, action: Mapping[str, str], timeout: float) -> list[dict[str, str]]:
        """Send an action; every message of its answer (an async Originate: the response,
        then the OriginateResponse event with its ActionID). TimeoutError when unanswered."""
        link = self._live_link()
        return all_headers(await self._wait(link.submit(action), link, timeout))

    async def request_in_stages(
        self,
        action: Mapping[str, str],
        budget: float,
        timeout: float,
        rest: Callable[[list[dict[str, str]]], None],
    ) -> list[dict[str, str]]:
        """Send an action answered in two stages (an async Originate: "queued" at once, the
        OriginateResponse when the call was placed or failed) and wait at most ``budget``.

        The whole answer when it came within ``budget``; else the first response alone, and
        ``rest(whole answer)`` runs when the rest comes (not at all when it does not come
        within ``timeout`` from now or the link is lost). AmiConnectionError when the link is
        lost, TimeoutError when not even the first response came within ``budget``.
        """
        link = self._live_link()
        staged = link.submit_staged(action)
        whole: asyncio.Future[object] = staged.future
        lost = self._lost_future()
        await asyncio.wait((whole, lost), timeout=budget, return_when=asyncio.FIRST_COMPLETED)
        if whole.done() and not whole.cancelled():
            return all_headers(whole.result())
        if lost.done() or not staged.first.done():
            link.forget(whole)
            if lost.done():
                raise AmiConnectionError(lost.result())
            raise TimeoutError(f"no answer from {self._where()} within {budget:g} s")
        give_up = asyncio.get_running_loop().call_later(timeout, link.forget, whole)

        def finished(done: asyncio.Future[object]) -> None:
            give_up.cancel()
            if not done.cancelled():
                rest(all_headers(done.result()))

        whole.add_done_callback(finished)
        return [first_headers(staged.first.result())]

    async def add_filter(self, expression: str, timeout: float) -> None:
        """Ask Asterisk to send only matching events; AmiActionRefused without write = system."""
        action = {"Action": "Filter", "Operation": "Add", "Filter": expression}
        _raise_if_refused(await self.send_action(action, timeout))

    async def active_channels(self, timeout: float) -> frozenset[str]:
        """The Uniqueids of the channels up now (``CoreShowChannels``).

        The list comes back as the action's own answer, so it works without ``read = call``:
        that is what makes it a witness of calls the events did not show. Asterisk wants
        ``write = system`` (or ``reporting``) for it; without, AmiActionRefused.
        """
        return frozenset(_header(item, "Uniqueid") for item in await self._channel_list(timeout))

    async def list_channels(self, timeout: float) -> list[ChannelEvent]:
        """The channels up now, as CHANNEL_UP events (calls to resume after a gap).

        A channel whose Hangup arrived while the list was on its way is left out: Asterisk
        may list it and send its Hangup first, and it must not come back to life.
        AmiActionRefused without ``write = system``; TimeoutError when unanswered.
        """
        self._hung_up = set()
        try:
            items = await self._channel_list(timeout)
            hung_up = self._hung_up
        finally:
            self._hung_up = None
        at = self._now()
        listed = (_channel_up(item, at, self._pbx) for item in items)
        return [e for e in listed if e is not None and e.uniqueid not in hung_up]

    async def _channel_list(self, timeout: float) -> list[dict[str, str]]:
        link = self._live_link()
        answer = await self._wait(link.submit({"Action": "CoreShowChannels"}), link, timeout)
        response, *items = all_headers(answer)
        _raise_if_refused(response)
        return [m for m in items if _header(m, "Event").lower() == "coreshowchannel"]

    async def wait_closed(self) -> str:
        """Wait until the link is lost or closed; the reason, e.g. "connection closed by server"."""
        return await asyncio.shield(self._lost_future())

    async def close(self) -> None:
        """Log off and close the link for good; idempotent. Leaves no timer or task behind."""
        self._closing = True
        logoff = self.connected
        self._mark_lost("closed by the client")
        if self._link is not None:
            await self._link.shut(logoff=logoff, grace=_CLOSE_GRACE)

    def abort(self, reason: str) -> None:
        """Drop a link that stopped answering at once: no Logoff, no grace period."""
        self._closing = True
        if self._link is not None:
            self._give_up(self._link, reason)
        else:
            self._mark_lost(reason)

    async def _open_and_login(self, loop: asyncio.AbstractEventLoop, link: SessionManager) -> str:
        host, port = self._config.host, self._config.port
        context = self._tls_context()
        try:
            await loop.create_connection(
                link.protocol_factory,
                host,
                port,
                ssl=context,
                server_hostname=host if context else None,
            )
        except OSError as exc:
            reason = _os_reason(exc)
            raise AmiConnectionError(f"cannot connect to {self._where()}: {reason}") from exc
        if self._closing:
            raise AmiConnectionError("closed by the client")
        version = await self._wait(link.banner, link)
        login = {
            "Action": "Login",
            "Username": self._config.username,
            "Secret": self._config.secret.get_secret_value(),
            "Events": "on",
        }
        answer = first_headers(await self._wait(link.submit(login), link))
        if _header(answer, "Response").lower() != "success":
            raise AmiLoginError(_header(answer, "Message") or "login refused")
        return version

    async def _wait(
        self,
        future: asyncio.Future[T],
        link: SessionManager,
        timeout: float | None = None,
    ) -> T:
        """The future's result, unless the link is lost (AmiConnectionError) or time runs out."""
        lost = self._lost_future()
        try:
            await asyncio.wait((future, lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not future.done():
                link.forget(future)  # a late answer is then ignored
        if future.done() and not future.cancelled():
            return future.result()
        if lost.done():
            raise AmiConnectionError(lost.result())
        raise TimeoutError(f"no answer from {self._where()} within {timeout} s")

    def _live_link(self) -> SessionManager:
        if self._link is None or not self.connected:
            lost = self._lost
            raise AmiConnectionError(lost.result() if lost and lost.done() else "not logged in")
        return self._link

    def _give_up(self, link: SessionManager, reason: str) -> None:
        self._mark_lost(reason)
        link.close()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self._config.tls:
            return None
        return self._ssl_context or ssl.create_default_context()

    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    def _lost_future(self) -> asyncio.Future[str]:
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        return self._lost

    def _mark_lost(self, reason: str) -> None:
        """The first reason wins: a link closed on purpose is not "closed by the server"."""
        self._logged_in = False
        if self._pacer is not None:
            self._pacer.close()
        lost = self._lost_future()
        if not lost.done():
            lost.set_result(reason)

    def _on_event(self, fields: Mapping[str, str]) -> Flow:
        """Queue the event. URGENT when it is a call's first channel and little waits in the
        queue; STALL when the intake is behind (see :mod:`.pacing`)."""
        kind = KINDS.get(fields.get("event", "").lower())
        if kind is None:
            return Flow.GO
        if kind is ChannelEventKind.DIAL_LEGACY and fields.get("subevent", "").lower() != "begin":
            return Flow.GO  # AMI 1.x Dial End: how a dial ended, unused
        if kind is _VARSET and not is_recording_file(fields):
            self._unused_varset()
            return Flow.GO
        self._counters.received += 1
        event = channel_event(kind, fields, self._now(), self._pbx)
        if event is None:
            self._count_invalid("no Uniqueid")
            return Flow.GO
        hung_up = self._hung_up
        if hung_up is not None and kind is _HANGUP and len(hung_up) < _MAX_HANGUPS_WHILE_LISTING:
            hung_up.add(event.uniqueid)
        queue = self._queue
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            self._count_dropped()
            return Flow.GO
        self._counters.delivered += 1
        waiting = queue.qsize()
        pacer = self._pacer
        if pacer is not None and (waiting >= pacer.stall_at or pacer.flooding):
            return pacer.after_queued(waiting)
        if kind is _NEWCHANNEL and waiting < _URGENT_BELOW and event.uniqueid == event.linkedid:
            return Flow.URGENT
        return Flow.GO

    def _unused_varset(self) -> None:
        """A VarSet of another variable: the Filter did not keep it out (a server that says
        it filters and does not). Past a few, this session stops reading VarSets: parsing
        every variable the dialplan sets would cost the hot path (the file is then left to
        ``pattern``)."""
        self._unused_varsets += 1
        if self._unused_varsets == _MAX_UNUSED_VARSETS and self._link is not None:
            self._link.unwant(_VARSET.value)

    def _now(self) -> float:
        clock = self._clock
        return clock() if clock is not None else asyncio.get_running_loop().time()

    def _on_fault(self, exc: Exception) -> None:
        # Only the type: the message may quote a raw event, and those stay in the AMI layer.
        self._count_invalid(f"handler failed: {type(exc).__name__}")

    def _on_discard(self, why: Discard) -> None:
        count: int = getattr(self._counters, why) + 1  # each Discard names its counter
        setattr(self._counters, why, count)
        if count % _WARN_EVERY == 1:
            log.warning("ami.input_discarded", reason=why, count=count, limit=MAX_MESSAGE_BYTES)

    def _count_invalid(self, why: str) -> None:
        self._counters.invalid += 1
        if self._counters.invalid % _WARN_EVERY == 1:
            log.warning("ami.event_invalid", reason=why, invalid=self._counters.invalid)

    def _count_dropped(self) -> None:
        self._counters.dropped += 1
        if self._counters.dropped % _WARN_EVERY == 1:
            log.warning(
                "ami.events_dropped", dropped=self._counters.dropped, queue_size=self._queue.maxsize
            )


def _os_reason(exc: OSError) -> str:
    """ "Connection refused" rather than asyncio's "Connect call failed ('host', port)"."""
    if exc.errno and not isinstance(exc, ssl.SSLError):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def _channel_up(item: Mapping[str, str], at: float, pbx: str) -> ChannelEvent | None:
    """One ``CoreShowChannel`` item; None without a Uniqueid.

    Its Context and Exten say where the channel is in the dialplan now, not where it was
    born: for a call's root, still waiting in Dial or Queue, that is where it came in.
    """
    uniqueid, linkedid = _header(item, "Uniqueid"), _header(item, "Linkedid")
    if not uniqueid:
        return None
    return ChannelEvent(
        kind=ChannelEventKind.CHANNEL_UP,
        channel=_header(item, "Channel"),
        uniqueid=uniqueid,
        linkedid=linkedid or uniqueid,
        caller_num=_header(item, "CallerIDNum"),
        caller_name=_header(item, "CallerIDName"),
        context=_header(item, "Context"),
        exten=_header(item, "Exten"),
        received_at=at,
        bridge_id=_header(item, "BridgeId"),
        pbx=pbx,
        has_linkedid=bool(linkedid),
        age=duration_seconds(_header(item, "Duration")),
    )


def duration_seconds(text: str) -> float:
    """``Duration`` as Asterisk lists it, ``HH:MM:SS`` (hours past 24 too), or plain seconds;
    0 when unreadable."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return 0.0
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds)


def _raise_if_refused(answer: Mapping[str, str]) -> None:
    if _header(answer, "Response").lower() != "success":
        raise AmiActionRefused(_header(answer, "Message") or "refused without a reason")


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), "")
