"""A fake Asterisk Manager Interface server on loopback, for the tests and ``kommo-callerid demo``.

It speaks the real wire protocol, byte for byte as in ``tests/data/ami-recordings``: the banner,
CRLF lines, a blank line after each message, ``ActionID`` echoed. It knows the actions the
daemon and ``check`` use (Login, Ping, Filter, Events, CoreShowChannels, Logoff) and checks
read/write classes the way Asterisk does. Faults are injectable: :meth:`FakeAmiServer.drop`
(connection reset), :meth:`FakeAmiServer.hang` (alive but silent),
:meth:`FakeAmiServer.emit_raw` (any bytes).

Size: a test fake; one file so the tests and the demo share one server.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from ssl import SSLContext
from types import TracebackType
from typing import cast

from .ami_channels import PbxChannels
from .recording import format_message

DEMO_USERNAME = "kommo-callerid"
DEMO_SECRET = "demo-secret"  # noqa: S105 - the fake server's built-in demo user, not a real secret


@dataclass(frozen=True, slots=True)
class AmiUser:
    """An ``manager.conf`` user: its secret and its read/write class lists."""

    secret: str
    read: frozenset[str] = frozenset({"call", "system"})
    write: frozenset[str] = frozenset({"system"})


@dataclass(eq=False, slots=True)
class FakeAmiSession:
    """One client connection, as the server sees it."""

    writer: asyncio.StreamWriter = field(repr=False)
    username: str | None = None
    #: The event classes this session receives (read classes the Login's ``Events`` allows).
    event_classes: frozenset[str] = frozenset()
    #: Filters accepted by ``Action: Filter``, in order (``!`` marks an exclusion).
    filters: list[str] = field(default_factory=list)
    closed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def transport(self) -> asyncio.Transport:
        return cast(asyncio.Transport, self.writer.transport)

    @property
    def logged_in(self) -> bool:
        return self.username is not None and not self.closed

    def wants(self, event_classes: frozenset[str], text: str) -> bool:
        if not self.logged_in:
            return False
        allowed = self.event_classes
        if event_classes and "all" not in allowed and not event_classes & allowed:
            return False
        return _passes_filters(self.filters, text)


class FakeAmiServer:
    """``async with FakeAmiServer(users={...}) as server:`` then connect to ``server.port``."""

    def __init__(
        self,
        users: Mapping[str, AmiUser] | None = None,
        *,
        version: str = "6.0.0",
        host: str = "127.0.0.1",
        ssl: SSLContext | None = None,
    ) -> None:
        self.users = dict(users) if users is not None else {DEMO_USERNAME: AmiUser(DEMO_SECRET)}
        self.version = version
        self.host = host
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._sessions: list[FakeAmiSession] = []
        self._awake = asyncio.Event()
        self._awake.set()
        self._stopping = False
        self._logged_in = asyncio.Condition()
        self._started_at = time.monotonic()
        #: The channels up that the emitted events made (CoreShowChannels lists them).
        self.pbx_channels = PbxChannels()
        #: More channels CoreShowChannels lists as they are (``Channel``, ``Uniqueid``, ...).
        self.channels: list[dict[str, str]] = []
        #: Every action received, in order; a Login's Secret is masked.
        self.actions: list[dict[str, str]] = []
        #: Action names (lower case) this server reads but never answers (a slow or odd PBX).
        self.unanswered: set[str] = set()
        #: Originate: its ``Channel`` values that fail (OriginateResponse Failure, ``Reason``),
        #: and how long the "phone" takes to answer before the OriginateResponse.
        self.originate_failures: dict[str, str] = {}
        self.originate_delay = 0.0
        #: Every Originate received, with ``time.perf_counter()`` of its arrival.
        self.originates: list[tuple[float, dict[str, str]]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.logins = 0
        self.login_failures = 0

    @property
    def ringing(self) -> int:
        """Originates whose OriginateResponse has not been sent yet (the "phone" rings)."""
        return len(self._answering)

    async def __aenter__(self) -> FakeAmiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self._ssl)

    async def stop(self) -> None:
        """Close the listener and every connection; returns when all sessions have ended."""
        self._stopping = True
        self._awake.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        self.drop()
        for session in self._sessions:
            await session.done.wait()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sessions(self) -> list[FakeAmiSession]:
        """Every session so far, open or closed, oldest first."""
        return list(self._sessions)

    def emit(self, event: Mapping[str, str]) -> int:
        """Send an event to each logged-in session allowed to see it; returns how many got it.

        The PBX's channels follow it whoever receives it (see :attr:`pbx_channels`).
        """
        self.pbx_channels.apply(event)
        if not self._awake.is_set():
            return 0
        data = format_message(event)
        text = data.decode("utf-8")
        classes = _event_classes(event.get("Privilege", ""))
        receivers = [s for s in self._live() if s.wants(classes, text)]
        for session in receivers:
            session.writer.write(data)
        return len(receivers)

    def emit_raw(self, data: bytes | memoryview) -> int:
        """Send bytes as they are to every logged-in session."""
        if not self._awake.is_set():
            return 0
        receivers = [s for s in self._live() if s.logged_in]
        for session in receivers:
            session.writer.write(data)
        return len(receivers)

    async def stream(self, data: bytes, chunk: int = 256 * 1024) -> int:
        """Send bytes to every logged-in session as fast as they read them (benchmarks).

        No filtering and no formatting: a caller that wants filtered traffic precomputes it,
        so the cost of filtering falls on this server, as it falls on Asterisk.
        """
        sent = 0
        view = memoryview(data)
        for start in range(0, len(data), chunk):
            sent = self.emit_raw(view[start : start + chunk])
            await self.drain()
        return sent

    async def drain(self) -> None:
        """Wait until what was written to each session has been handed to the kernel."""
        await self._drain()

    async def play(self, events: Iterable[Mapping[str, str]], delay: float = 0.0) -> int:
        """Emit events in order, ``delay`` seconds apart; returns how many were played."""
        played = 0
        for event in events:
            self.emit(event)
            played += 1
            await self._drain()
            if delay:
                await asyncio.sleep(delay)
        return played

    def drop(self) -> None:
        """Abort every connection at once, as a crashed Asterisk or a reset link would."""
        for session in self._live():
            session.writer.transport.abort()

    def hang(self) -> None:
        """Stop reading and answering; the sockets stay open (a wedged Asterisk)."""
        self._awake.clear()
        for session in self._live():
            session.transport.pause_reading()

    def unhang(self) -> None:
        self._awake.set()
        for session in self._live():
            session.transport.resume_reading()

    async def wait_logged_in(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` successful logins have happened since start (TimeoutError)."""
        async with asyncio.timeout(timeout), self._logged_in:
            await self._logged_in.wait_for(lambda: self.logins >= count)

    def _live(self) -> list[FakeAmiSession]:
        return [s for s in self._sessions if not s.closed]

    async def _drain(self) -> None:
        for session in self._live():
            with suppress(ConnectionError):
                await session.writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = FakeAmiSession(writer)
        self._sessions.append(session)
        self.connections += 1
        try:
            await self._awake.wait()
            if self._stopping:
                return
            writer.write(f"Asterisk Call Manager/{self.version}\r\n".encode())
            while (action := await _read_message(reader)) is not None:
                await self._awake.wait()
                if self._stopping or not await self._answer(session, action):
                    break
                await writer.drain()
        except (OSError, ValueError):
            pass  # a reset link or an over-long line ends the session, as in Asterisk
        finally:
            session.closed = True
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
            session.done.set()

    async def _answer(self, session: FakeAmiSession, action: dict[str, str]) -> bool:
        """Answer one action; False means the session ends after it."""
        name = action.get("action", "").lower()
        self.actions.append(_masked(action))
        if name in self.unanswered:
            return True
        if name == "login":
            return await self._login(session, action)
        if name == "logoff":
            _reply(session, action, "Goodbye", Message="Thanks for all the fish.")
            return False
        if not session.logged_in:
            _reply(session, action, "Error", Message="Permission denied")
        elif name == "ping":
            _reply(session, action, "Success", Ping="Pong", Timestamp=f"{time.time():.6f}")
        elif name == "filter":
            self._filter(session, action)
        elif name == "events":
            self._events(session, action)
        elif name == "coreshowchannels":
            self._core_show_channels(session, action)
        elif name == "originate":
            self._originate(session, action)
        else:
            _reply(session, action, "Error", Message="Invalid/unknown command")
        return True

    async def _login(self, session: FakeAmiSession, action: dict[str, str]) -> bool:
        username = action.get("username", "")
        user = self.users.get(username)
        if user is None or user.secret != action.get("secret"):
            self.login_failures += 1
            _reply(session, action, "Error", Message="Authentication failed")
            return False  # Asterisk hangs up after a failed login
        session.username = username
        session.event_classes = _requested_classes(action.get("events", "on"), user.read)
        _reply(session, action, "Success", Message="Authentication accepted")
        if "system" in session.event_classes:
            uptime = str(int(time.monotonic() - self._started_at))
            fully_booted = {"Event": "FullyBooted", "Privilege": "system,all"}
            fully_booted |= {"Uptime": uptime, "LastReload": uptime, "Status": "Fully Booted"}
            session.writer.write(format_message(fully_booted))
        async with self._logged_in:
            self.logins += 1
            self._logged_in.notify_all()
        return True

    def _filter(self, session: FakeAmiSession, action: dict[str, str]) -> None:
        user = self.users[session.username or ""]
        if "system" not in user.write:
            _reply(session, action, "Error", Message="Permission denied")
            return
        pattern = action.get("filter", "")
        if action.get("operation", "").lower() != "add" or not _valid_filter(pattern):
            _reply(session, action, "Error", Message="Filter Not Added")
            return
        session.filters.append(pattern)
        _reply(session, action, "Success", Message="Filter Added Successfully")

    def _events(self, session: FakeAmiSession, action: dict[str, str]) -> None:
        user = self.users[session.username or ""]
        session.event_classes = _requested_classes(action.get("eventmask", "on"), user.read)
        _reply(session, action, "Success", Events="On" if session.event_classes else "Off")

    def _core_show_channels(self, session: FakeAmiSession, action: dict[str, str]) -> None:
        # Like Asterisk: a list action answered to the session itself, whatever its read
        # classes; it needs write = system or reporting.
        user = self.users[session.username or ""]
        if not user.write & {"system", "reporting"}:
            _reply(session, action, "Error", Message="Permission denied")
            return
        _reply(session, action, "Success", EventList="start", Message="Channels will follow")
        channels = [*self.pbx_channels.listed(), *self.channels]
        for channel in channels:
            _reply_item(session, action, "CoreShowChannel", channel)
        complete = {"EventList": "Complete", "ListItems": str(len(channels))}
        _reply_item(session, action, "CoreShowChannelsComplete", complete)

    def _originate(self, session: FakeAmiSession, action: dict[str, str]) -> None:
        # Like Asterisk: write = originate, a Channel, then (Async) "queued" at once and the
        # OriginateResponse event, to every session that may read it, when the leg answered.
        self.originates.append((time.perf_counter(), dict(action)))
        user = self.users[session.username or ""]
        if "originate" not in user.write and "all" not in user.write:
            _reply(session, action, "Error", Message="Permission denied")
            return
        channel = action.get("channel", "")
        if not channel:
            _reply(session, action, "Error", Message="Channel not specified")
            return
        if action.get("async", "").lower() not in ("true", "yes", "1"):
            _reply(session, action, "Success", Message="Originate successfully queued")
            return
        _reply(session, action, "Success", Message="Originate successfully queued")
        task = asyncio.create_task(self._originate_response(action))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _originate_response(self, action: dict[str, str]) -> None:
        if self.originate_delay:
            await asyncio.sleep(self.originate_delay)
        channel = action.get("channel", "")
        reason = self.originate_failures.get(channel)
        event = {
            "Event": "OriginateResponse",
            "Privilege": "call,all",
            "ActionID": action.get("actionid", ""),
            "Response": "Failure" if reason is not None else "Success",
            "Channel": channel,
            "Context": action.get("context", ""),
            "Exten": action.get("exten", ""),
            "Reason": reason if reason is not None else "4",
            "Uniqueid": action.get("channelid", "<null>"),
            "CallerIDNum": "<unknown>",
            "CallerIDName": "<unknown>",
        }
        self.emit(event)
        await self._drain()


async def _read_message(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """The next action (header names lower-cased), or None at end of stream."""
    fields: dict[str, str] = {}
    while line := await reader.readline():
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            if fields:
                return fields
            continue
        key, _, value = text.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return None


def _reply(
    session: FakeAmiSession, action: Mapping[str, str], response: str, **fields: str
) -> None:
    message = {"Response": response}
    if "actionid" in action:
        message["ActionID"] = action["actionid"]
    session.writer.write(format_message(message | fields))


def _reply_item(
    session: FakeAmiSession, action: Mapping[str, str], event: str, fields: Mapping[str, str]
) -> None:
    """One message of a list answer: an event carrying the action's ActionID."""
    message = {"Event": event}
    if "actionid" in action:
        message["ActionID"] = action["actionid"]
    session.writer.write(format_message(message | dict(fields)))


def _masked(action: Mapping[str, str]) -> dict[str, str]:
    return {key: "********" if key == "secret" else value for key, value in action.items()}


def _event_classes(privilege: str) -> frozenset[str]:
    """``call,all`` -> {"call"}: the classes a reader needs one of."""
    return frozenset(c.strip().lower() for c in privilege.split(",") if c.strip()) - {"all"}


def _requested_classes(events: str, read: frozenset[str]) -> frozenset[str]:
    """The classes a session receives: ``on`` is all its read classes, ``off`` none."""
    requested = events.strip().lower()
    if requested in ("on", "yes", "true", "all"):
        return read
    if requested in ("off", "no", "false", ""):
        return frozenset()
    if "all" in read:  # read = all grants every class a mask may ask for
        return _event_classes(requested)
    return _event_classes(requested) & read


def _valid_filter(pattern: str) -> bool:
    try:
        re.compile(pattern.removeprefix("!"))
    except re.error:
        return False
    return bool(pattern.removeprefix("!"))


def _passes_filters(filters: list[str], text: str) -> bool:
    """Asterisk's rule: with include filters an event must match one; no exclude may match."""
    includes = [f for f in filters if not f.startswith("!")]
    excludes = [f[1:] for f in filters if f.startswith("!")]
    if includes and not any(re.search(f, text) for f in includes):
        return False
    return not any(re.search(f, text) for f in excludes)
