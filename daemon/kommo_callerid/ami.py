"""The AMI side: one Asterisk Manager session per :class:`AmiClient`, channel events into a queue.

panoramisk 1.4 parses the stream and matches responses to actions; this module switches off
or replaces what it gets wrong for a daemon, and keeps its untyped messages inside:

- it reconnects and pings on its own fixed timers: both off here; the supervisor owns
  reconnects and the watchdog (:meth:`AmiClient.send_action` with a Ping);
- a failed login is silent there and retried forever: here it is :class:`AmiLoginError`;
- an event handler that raises drops its connection: handlers here never raise;
- it decodes every TCP read on its own (a UTF-8 name split between reads loses letters):
  here one incremental decoder per connection;
- it queues unanswered actions to re-send after a reconnect: here a lost link fails them.
"""

from __future__ import annotations

import asyncio
import codecs
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager
from panoramisk.message import Message

from .config import AmiConfig
from .models import (
    AmiConnectionError,
    AmiLoginError,
    AmiSessionInfo,
    ChannelEvent,
    ChannelEventKind,
)

__all__ = ["AmiClient", "AmiConnectionError", "AmiCounters", "AmiLoginError"]

log = structlog.get_logger(__name__)

BANNER_PREFIX = "Asterisk Call Manager/"
_MAX_BANNER_CHARS = 256
_MAX_MESSAGE_CHARS = 1 << 20  # no AMI message is this long: the peer is broken or not AMI
_CLOSE_GRACE = 2.0  # seconds a closing link may take to flush before it is aborted
_WARN_EVERY = 1000  # drops and bad events are logged on the 1st, 1001st, ... occurrence
_KINDS = {kind.value.lower(): kind for kind in ChannelEventKind}

T = TypeVar("T")


@dataclass(slots=True)
class AmiCounters:
    received: int = 0  # Newchannel, NewCallerid and Hangup events read from Asterisk
    delivered: int = 0  # put on the queue
    dropped: int = 0  # lost because the queue was full
    invalid: int = 0  # unusable (no Uniqueid) or failed to convert


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
    ) -> None:
        self._config = config
        self._queue = queue
        self._clock = clock or _loop_time
        self._ssl_context = ssl_context
        self._counters = AmiCounters()
        self._link: _SessionManager | None = None
        self._lost: asyncio.Future[str] | None = None
        self._started = False
        self._closing = False
        self._logged_in = False

    @property
    def counters(self) -> AmiCounters:
        """A snapshot of the event counters."""
        return replace(self._counters)

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
        self._link = link = _SessionManager(
            loop, self._config, self._on_event, self._on_fault, self._mark_lost
        )
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

    async def send_action(
        self,
        action: Mapping[str, str],
        timeout: float,  # each caller (Ping watchdog, check) has its own
    ) -> dict[str, str]:
        """Send an action; the headers of its first response. TimeoutError when unanswered."""
        link = self._link
        if link is None or not self.connected:
            lost = self._lost
            raise AmiConnectionError(lost.result() if lost and lost.done() else "not logged in")
        return _first_headers(await self._wait(link.submit(action), link, timeout))

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

    async def _open_and_login(self, loop: asyncio.AbstractEventLoop, link: _SessionManager) -> str:
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
            reason = exc.strerror or str(exc) or type(exc).__name__
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
        answer = _first_headers(await self._wait(link.submit(login), link))
        if _header(answer, "Response").lower() != "success":
            raise AmiLoginError(_header(answer, "Message") or "login refused")
        return version

    async def _wait(
        self,
        future: asyncio.Future[T],
        link: _SessionManager,
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

    def _give_up(self, link: _SessionManager, reason: str) -> None:
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
        lost = self._lost_future()
        if not lost.done():
            lost.set_result(reason)

    def _on_event(self, fields: Mapping[str, str]) -> None:
        kind = _KINDS.get(fields.get("event", "").lower())
        if kind is None:
            return
        self._counters.received += 1
        event = _channel_event(kind, fields, self._clock())
        if event is None:
            self._count_invalid("no Uniqueid")
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._count_dropped()
        else:
            self._counters.delivered += 1

    def _on_fault(self, exc: Exception) -> None:
        # Only the type: the message may quote a raw event, and those stay in this module.
        self._count_invalid(f"handler failed: {type(exc).__name__}")

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


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _channel_event(
    kind: ChannelEventKind, fields: Mapping[str, str], received_at: float
) -> ChannelEvent | None:
    """The event, or None without a Uniqueid (it could not be tied to any call)."""
    uniqueid = fields.get("uniqueid", "")
    if not uniqueid:
        return None
    return ChannelEvent(
        kind=kind,
        channel=fields.get("channel", ""),
        uniqueid=uniqueid,
        linkedid=fields.get("linkedid") or uniqueid,  # Asterisk < 13.5 sends no Linkedid
        caller_num=fields.get("calleridnum", ""),
        caller_name=fields.get("calleridname", ""),
        context=fields.get("context", ""),
        exten=fields.get("exten", ""),
        received_at=received_at,
    )


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), "")


# ---- panoramisk, confined: everything below handles its untyped objects ----


def _text(value: Any) -> str:
    """A header value; panoramisk turns a repeated header into a list: keep the first."""
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value).strip()


def _first_headers(answer: Any) -> dict[str, str]:
    """The first response message as a plain dict (a multi-message answer is a list)."""
    message = answer[0] if isinstance(answer, list) else answer
    return {str(k): _text(v) for k, v in message.items() if not (k == "content" and not v)}


class _SessionManager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's Manager for exactly one connection: no reconnect, no pinger, no re-send."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: AmiConfig,
        on_event: Callable[[Mapping[str, str]], None],
        on_fault: Callable[[Exception], None],
        on_lost: Callable[[str], None],
    ) -> None:
        # The real endpoint, though only AmiClient connects: were panoramisk's reconnect ever
        # armed again, it would reach this server (and the tests would see it).
        super().__init__(loop=loop, host=config.host, port=config.port, encoding="utf-8")
        # panoramisk registers FullyBooted -> re-send queued actions, in a task nobody owns.
        self.callbacks.clear()
        self.patterns.clear()
        self.banner: asyncio.Future[str] = loop.create_future()
        self.down: asyncio.Future[None] = loop.create_future()
        self.last_received_at: float | None = None
        self._on_event = on_event
        self._on_fault = on_fault
        self._on_lost = on_lost
        self._loss_reason: str | None = None

    def protocol_factory(self) -> _SessionProtocol:
        return _SessionProtocol(self)

    # panoramisk's connect() leads to its connection_made(), which logs in and arms the
    # pinger; AmiClient opens the link, logs in and (through send_action) pings itself.
    def connect(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("AmiClient opens the connection itself")

    def connection_lost(self, exc: BaseException | None) -> None:
        # panoramisk would call_later(reconnect_timeout, self.connect) here; a session just ends.
        if not self.down.done():
            self.down.set_result(None)
        self.banner.cancel()
        self._on_lost(self._loss_reason or _describe_loss(exc))

    def dispatch(self, event: Any) -> None:
        # A raise here would reach asyncio's data_received and drop the connection.
        try:
            self._on_event({str(k).lower(): _text(v) for k, v in event.items()})
        except Exception as exc:
            self.fault(exc)

    def fault(self, exc: Exception) -> None:
        self._on_fault(exc)

    def submit(self, action: Mapping[str, str]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.protocol.send(action)
        return future

    def forget(self, future: asyncio.Future[Any]) -> None:
        future.cancel()
        responses = self.protocol.responses if self.protocol else {}
        for key in [k for k, action in responses.items() if action.future is future]:
            del responses[key]

    def fail(self, reason: str) -> None:
        """End the link because of what the server sent."""
        self._loss_reason = self._loss_reason or reason
        self.protocol.transport.abort()

    def close(self, *, logoff: bool = False) -> None:
        if logoff and self.protocol is not None and not self.protocol.closed:
            self.protocol.send({"Action": "Logoff"})
        super().close()  # cancels the pinger, closes the transport
        if self.protocol is None and not self.down.done():
            self.down.set_result(None)

    async def shut(self, *, logoff: bool, grace: float) -> None:
        """Close and wait until the transport is gone; abort it if it takes too long."""
        self.close(logoff=logoff)
        try:
            await asyncio.wait_for(asyncio.shield(self.down), grace)
        except TimeoutError:
            self.protocol.transport.abort()
            await asyncio.shield(self.down)


def _describe_loss(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed by the server"
    return f"connection lost: {str(exc) or type(exc).__name__}"


class _SessionProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's protocol with a banner check, incremental UTF-8 and no secret in logs."""

    def __init__(self, manager: _SessionManager) -> None:
        super().__init__()
        # Set before connection_made: the banner may arrive before create_connection returns.
        self.factory = manager
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.closed = False
        self.responses: dict[str, Any] = {}
        self.version: str | None = None
        self.encoding = "utf-8"
        self.log = self.factory.log
        self.factory.protocol = self

    def send(self, data: Mapping[str, str], as_list: bool | None = None) -> asyncio.Future[Any]:
        action = Action(dict(data), as_list=as_list)
        self.responses[action.id] = action
        # Never logged, unlike panoramisk on a failed write: a Login carries the secret.
        self.transport.write(str(action).encode("utf-8"))
        future: asyncio.Future[Any] = action.future
        return future

    def data_received(self, data: bytes) -> None:
        self.factory.last_received_at = self.factory.loop.time()
        self._buffer += self._decoder.decode(data)
        if self.version is None and not self._take_banner():
            return
        *messages, self._buffer = self._buffer.split("\r\n\r\n")
        for text in messages:
            try:
                message = Message.from_line(text.strip())
                if message is not None:
                    self.handle_message(message)
            except Exception as exc:  # one bad message must not end the link
                self.factory.fault(exc)
        if len(self._buffer) > _MAX_MESSAGE_CHARS:
            self.factory.fail("the server sent a message too long to be AMI")

    def _take_banner(self) -> bool:
        line, newline, rest = self._buffer.partition("\n")
        if not newline:
            if len(self._buffer) > _MAX_BANNER_CHARS:
                self.factory.fail("not an AMI server: no banner")
            return False
        line = line.rstrip("\r")
        if not line.startswith(BANNER_PREFIX):
            self.factory.fail(f"not an AMI server: it said {line[:60]!r}")
            return False
        self.version = line.removeprefix(BANNER_PREFIX).strip()
        self._buffer = rest
        if not self.factory.banner.done():
            self.factory.banner.set_result(self.version)
        return True

    def handle_message(self, message: Any) -> None:
        action = self.responses.get(message.id)
        if action is None and message.action_id:
            action = self.responses.get(message.action_id)
        if action is not None:
            if action.add_message(message):
                self.factory.forget(action.future)
        elif "event" in message:
            if message["event"].lower() == "shutdown":
                self.factory.fail("Asterisk is shutting down")
            self.factory.dispatch(message)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.close()
        self.factory.connection_lost(exc)

    def close(self) -> None:
        # panoramisk queues unanswered actions here to re-send after a reconnect; a session
        # has no next connection, so they are cancelled (AmiClient reports the loss).
        for action in self.responses.values():
            action.future.cancel()
        self.responses.clear()
        if not self.closed:
            self.closed = True
            self.transport.close()
