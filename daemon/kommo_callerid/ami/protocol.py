"""panoramisk 1.4 bent to one AMI session: :class:`SessionManager` and its protocol.

panoramisk parses the AMI stream and matches responses to actions; that is kept. What it gets
wrong for a daemon is switched off or replaced here:

- a lost connection arms a timer that calls ``connect()`` again, and ``Manager.close()`` does
  not cancel it: a closed manager comes back. Here a lost link ends the session; the
  supervisor owns reconnects (the next session is a new AmiClient);
- its pinger sends a Ping on a fixed timer and never checks the answer, so a dead link goes
  unnoticed: off here; the watchdog pings through ``AmiClient.send_action`` with a timeout;
- a refused login is silent (``authenticated = False``) and tried again after every reconnect:
  here AmiClient sends the Login and raises :class:`~.models.AmiLoginError`;
- an event handler that raises propagates into asyncio's ``data_received``, which drops the
  connection: here a failing handler or an unparsable message is reported, the link stays;
- it decodes every TCP read on its own with ``errors='ignore'``, so a UTF-8 name split between
  reads loses letters and a Latin-1 name loses its accents: here the bytes are split into
  messages at the blank line first, then each message is decoded as UTF-8, and when it is
  not UTF-8 each line that is not is read as Latin-1 (which decodes any bytes);
- its buffer grows without end until a blank line comes: here it holds at most
  :data:`MAX_MESSAGE_BYTES`; a longer message is skipped up to the next blank line, and
  counted, as is text that is no AMI message;
- a message ended by a blank line of bare LFs or CRs (not AMI: Asterisk always sends CRLF)
  would swallow the valid message after it: such a piece is cut off at its own blank line and
  counted as garbage, and the next message is read;
- it dispatches events that arrive before the Login is answered: here they are counted as
  ignored until a Login succeeds (an unauthenticated peer must not make calls appear);
- on a loss it queues unanswered actions for a ``FullyBooted`` event to re-send, in a task
  nobody owns: here that callback is removed and a lost link cancels them.

It also checks the banner (a peer that is not AMI is refused) and never logs an action (a Login
carries the secret).

Speed: a busy PBX sends tens of thousands of events a second and the daemon uses six kinds.
Building panoramisk's ``Message`` (a case-insensitive dict) costs far more than reading the
``Event:`` line, so each message's event name is read from its raw bytes first (a message
starting with a wanted event's line as Asterisk spells it is routed on that prefix alone): an
event the handler does not want is counted and dropped undecoded; a wanted one is parsed
straight into a plain dict of the headers the handler reads (``headers``), the others skipped.
Only responses, garbage and events that may answer an action take panoramisk's path.
What the handler returns (:class:`Flow`) paces the reader. URGENT (a call has just begun):
the rest of a short TCP read is parsed two loop turns later: the call's intake and its
notification run first, not behind the events the read brings after it (a long read is a
backlog: read whole). STALL (the intake is behind, see :mod:`.pacing`): nothing more is
parsed, and the transport stops reading, until :meth:`SessionManager.unstall`. Order is kept
(later reads wait in line behind it), and a lost link parses what is held before it reports
the loss.

panoramisk's objects are untyped (``Any``). Only :mod:`.ami` touches them, through
:meth:`SessionManager.submit`, :func:`first_headers` and
:func:`all_headers`; events leave as ``str`` mappings.

Size: the whole wire framing beside panoramisk's parser, kept together: the fast path
reads in one place.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager
from panoramisk.message import Message

from kommo_callerid.core.config import AmiConfig

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Discard",
    "Flow",
    "SessionManager",
    "all_headers",
    "first_headers",
]

BANNER_PREFIX = b"Asterisk Call Manager/"
_MAX_BANNER_BYTES = 256
#: The reader never buffers more. AMI messages are a few hundred bytes; a longer one (with its
#: blank line) is skipped: the peer is broken or not AMI, and it must not exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024
_END = b"\r\n\r\n"  # a message ends with a blank line
_EVENT = b"Event: "
_EVENT_LINE = b"\r\nEvent: "
#: After an urgent event (a call's first channel) the rest of a read shorter than this waits
#: two loop turns. A longer read means a backlog (the kernel queued more than a few dozen
#: events while the daemon was busy): it is read whole, as the intake takes a long queue in
#: whole batches, and a flood is not read call by call.
URGENT_READ_BYTES = 16 * 1024
#: Blank lines of bare LFs or CRs: they end a (broken) message that is not AMI's CRLF.
_FOREIGN_ENDS = (b"\n\n", b"\r\r")
#: Events that need panoramisk's path whatever the handler wants: Shutdown ends the link.
_SPECIAL_EVENTS = frozenset({b"shutdown"})

#: Why input was thrown away: a message over MAX_MESSAGE_BYTES, or text that is no AMI message.
Discard = Literal["oversized", "garbage"]
#: Header names remembered per session (each line's name is looked up, not lower-cased):
#: more than an Asterisk sends; a peer inventing names gets them lower-cased one by one.
_MAX_KNOWN_NAMES = 512
_MAX_NAME_CHARS = 64


class Flow(enum.Enum):
    """What the event handler asks of the reader after an event."""

    GO = enum.auto()  # read on
    #: a call has just begun: the rest of a short read waits two loop turns (see module doc)
    URGENT = enum.auto()
    #: the handler is behind: stop parsing and reading until :meth:`SessionManager.unstall`
    STALL = enum.auto()


def _text(value: Any) -> str:
    """A header value; panoramisk turns a repeated header into a list: keep the first."""
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value).strip()


def first_headers(answer: Any) -> dict[str, str]:
    """The first response message as a plain dict (a multi-message answer is a list)."""
    message = answer[0] if isinstance(answer, list) else answer
    return {str(k): _text(v) for k, v in message.items() if not (k == "content" and not v)}


def all_headers(answer: Any) -> list[dict[str, str]]:
    """Every message of an answer (a list action: the response, its items, the Complete)."""
    return [
        first_headers(message) for message in (answer if isinstance(answer, list) else [answer])
    ]


class SessionManager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's Manager for exactly one connection: no reconnect, no pinger, no re-send."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: AmiConfig,
        on_event: Callable[[Mapping[str, str]], Flow],
        on_fault: Callable[[Exception], None],
        on_lost: Callable[[str], None],
        *,
        on_discard: Callable[[Discard], None],
        events: Collection[str] | None = None,
        headers: Collection[str] | None = None,
    ) -> None:
        """``events``: the event names ``on_event`` wants (any case); None means every event.

        Others are counted in :attr:`ignored` and never parsed. ``headers``: the header names
        ``on_event`` reads (any case) from a wanted event; None means every header. Only
        those are decoded into the mapping it gets (events taking panoramisk's path, which
        may answer an action, keep every header).
        """
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
        self._on_discard = on_discard
        self._loss_reason: str | None = None
        #: False until a Login is answered with Success: events before that are ignored.
        self.logged_in = False
        self.early_events = 0
        #: A set the session's protocol shares: a name added later (:meth:`want`) is read
        #: from then on.
        self.wanted: set[bytes] | None = None
        #: Each wanted event's first line as spelled here (Asterisk's own spelling): a message
        #: starting with one of these is routed without its name being read out.
        self.event_lines: tuple[bytes, ...] = ()
        self._spellings: dict[bytes, bytes] = {}
        if events is not None:
            self.wanted = set()
            for name in events:
                self.want(name)
        self.headers = None if headers is None else frozenset(h.lower() for h in headers)

    def want(self, name: str) -> None:
        """Read the event ``name`` (spelled as Asterisk does) from now on."""
        if self.wanted is None:
            return  # every event is read
        key = name.lower().encode()
        self.wanted.add(key)
        if key not in _SPECIAL_EVENTS:
            self._spellings[key] = _EVENT + name.encode() + b"\r\n"
        self.event_lines = tuple(self._spellings.values())

    def unwant(self, name: str) -> None:
        """Stop reading the event ``name``: it is counted as ignored from now on."""
        if self.wanted is None:
            return
        key = name.lower().encode()
        self.wanted.discard(key)
        self._spellings.pop(key, None)
        self.event_lines = tuple(self._spellings.values())

    def protocol_factory(self) -> _SessionProtocol:
        return _SessionProtocol(self)

    @property
    def ignored(self) -> int:
        """Events dropped unparsed because ``on_event`` does not want them."""
        ignored = self.protocol.ignored if self.protocol is not None else 0
        return ignored + self.early_events

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
        """An event parsed by panoramisk (the slow path)."""
        self.deliver({str(k).lower(): _text(v) for k, v in event.items()})

    def deliver(self, fields: Mapping[str, str]) -> Flow:
        """What the handler asks of the reader after this event (see :class:`Flow`)."""
        if not self.logged_in:
            self.early_events += 1
            return Flow.GO
        # A raise here would reach asyncio's data_received and drop the connection.
        try:
            return self._on_event(fields)
        except Exception as exc:
            self.fault(exc)
            return Flow.GO

    def unstall(self) -> None:
        """Read again after the handler asked for a stall (:attr:`Flow.STALL`)."""
        if self.protocol is not None:
            self.protocol.unstall()

    def fault(self, exc: Exception) -> None:
        self._on_fault(exc)

    def discard(self, why: Discard) -> None:
        self._on_discard(why)

    def submit(self, action: Mapping[str, str]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.protocol.send(action)
        return future

    def submit_staged(self, action: Mapping[str, str]) -> StagedAction:
        """An action answered in two stages (an async Originate): see :class:`StagedAction`."""
        staged: StagedAction = self.protocol.send_staged(action)
        return staged

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


class _Route(enum.Enum):
    IGNORE = enum.auto()  # an event the handler does not want: counted, never decoded
    EVENT = enum.auto()  # a wanted event: parsed straight into a dict
    PANORAMISK = enum.auto()  # responses, garbage, Shutdown: panoramisk's Message


class _SessionProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's protocol with a banner check, a bounded byte buffer and no secret in logs."""

    def __init__(self, manager: SessionManager) -> None:
        super().__init__()
        # Set before connection_made: the banner may arrive before create_connection returns.
        self.factory = manager
        self._buffer = bytearray()  # never longer than MAX_MESSAGE_BYTES
        self._scanned = 0  # the buffer holds no message end before this offset
        self._skipping = False  # inside an oversized message: drop up to the next blank line
        self.max_buffered = 0  # high-water mark of the buffer, for tests and diagnostics
        self.ignored = 0  # events dropped unparsed: the handler does not want them
        self._wanted = manager.wanted
        #: The buffer may hold a blank line of bare LFs or CRs (see _after_foreign_message):
        #: most streams never do, and their messages are then not searched for one.
        self._foreign = False
        self._names = None if manager.headers is None else _HeaderNames(manager.headers)
        #: Reads that came while parsing waits for an urgent event's turn or a stall's end
        #: (None: not waiting).
        self._held: list[bytes] | None = None
        #: The handler asked for a stall: nothing is parsed (nor read) until unstall().
        self._stalled = False
        #: The link is lost and what is held is parsed: no event may pause that.
        self._flushing = False

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

    def send_staged(self, data: Mapping[str, str]) -> StagedAction:
        action = StagedAction(dict(data))
        self.responses[action.id] = action
        self.transport.write(str(action).encode("utf-8"))  # never logged (see send)
        return action

    def data_received(self, data: bytes) -> None:
        self.factory.last_received_at = self.factory.loop.time()
        if self._held is not None:  # parsing waits (an urgent event's turn, a stall): in line
            self._held.append(bytes(data))
            return
        self._feed(memoryview(data), pausing=len(data) < URGENT_READ_BYTES)

    def unstall(self) -> None:
        """The handler caught up (or may not wait longer): read and parse again."""
        if not self._stalled:
            return
        self._stalled = False
        self.transport.resume_reading()  # a no-op once the transport is closing
        self._resume()

    def _stall(self) -> None:
        self._stalled = True
        # The kernel buffers what comes meanwhile; the handler bounds the stall in time.
        self.transport.pause_reading()

    def _feed(self, rest: memoryview, *, pausing: bool) -> None:
        """Parse ``rest``; ``pausing``: stop after an urgent event (see _take_messages)."""
        while rest:  # only as much as fits: the buffer never exceeds MAX_MESSAGE_BYTES
            room = MAX_MESSAGE_BYTES - len(self._buffer)
            if room <= 0:  # full and no message end in it
                self._skip_oversized()
                continue
            added_at = len(self._buffer)
            self._buffer += rest[:room]
            rest = rest[room:]
            if not self._foreign:  # the new bytes, and one before (a pair split by reads)
                self._foreign = _has_foreign(self._buffer, max(0, added_at - 1))
            self.max_buffered = max(self.max_buffered, len(self._buffer))
            if self.version is None and not self._take_banner():
                return
            if self._take_messages(pausing):
                self._hold(rest)
                return

    def _hold(self, rest: memoryview) -> None:
        """Parsing stopped (an urgent event, a stall): the rest of the read waits."""
        self._held = [bytes(rest)] if rest else []
        if not self._stalled:  # a stall ends with unstall()
            self._resume_later()

    def _resume_later(self) -> None:
        """Parse what is held two loop turns from now: one turn lets the intake take the
        urgent event, the second lets the task it starts (the call's lookup and notification)
        run before this parse."""
        loop = self.factory.loop
        loop.call_soon(loop.call_soon, self._resume)

    def _resume(self, *, pausing: bool = True) -> None:
        if self._stalled:  # a stall came meanwhile: unstall() resumes
            return
        held, self._held = self._held, None
        if held is None:  # already flushed (the link was lost meanwhile)
            return
        pausing = pausing and sum(map(len, held)) < URGENT_READ_BYTES  # else a backlog
        if self._take_messages(pausing):  # the buffer's messages first
            self._held = held
            if not self._stalled:
                self._resume_later()
            return
        for index, chunk in enumerate(held):
            self._feed(memoryview(chunk), pausing=pausing)
            if self._held is not None:  # paused again: the later reads stay in line
                self._held.extend(held[index + 1 :])
                return

    def _take_messages(self, pausing: bool = False) -> bool:
        """Parse the buffer's whole messages; True when it stopped after an urgent event
        (``pausing`` only) or for a stall (messages may be left in the buffer)."""
        buffer, start = self._buffer, 0
        paused = False
        foreign = self._foreign
        while (end := buffer.find(_END, max(start, self._scanned))) >= 0:
            if self._skipping:  # the tail of an oversized message: reading resumes after it
                self._skipping = False
            else:
                if foreign:
                    start = self._after_foreign_message(buffer, start, end)
                route = self._route(buffer, start, end)
                if route is _Route.IGNORE:
                    self.ignored += 1
                elif route is _Route.EVENT:
                    flow = self.factory.deliver(_fields(_decode(buffer[start:end]), self._names))
                    if flow is not Flow.GO and not self._flushing:
                        if flow is Flow.STALL:
                            self._stall()
                            paused = True
                        else:
                            paused = pausing
                else:
                    self._parse(buffer[start:end])
            start = end + len(_END)
            if paused:
                break
        del buffer[:start]
        if foreign:  # what is left: a message's head, or the rest of a paused read
            self._foreign = _has_foreign(buffer, 0)
        # after a pause the buffer may still hold whole messages: scan it from the start
        self._scanned = 0 if paused else max(0, len(buffer) - len(_END) + 1)
        return paused

    def _after_foreign_message(self, buffer: bytearray, start: int, end: int) -> int:
        """Where the CRLF message ending at ``end`` really starts: after the last blank line
        of bare LFs or CRs, whatever came before it counted as garbage."""
        # Two plain searches, no generator: this runs for every message while the buffer
        # holds one.
        lf, cr = _FOREIGN_ENDS
        cut = max(buffer.rfind(lf, start, end), buffer.rfind(cr, start, end))
        if cut < 0:
            return start
        if bytes(buffer[start:cut]).strip():
            self.factory.discard("garbage")
        return cut + 2

    def _route(self, buffer: bytearray, start: int, end: int) -> _Route:
        """Where a message goes, judged by its ``Event:`` line on the raw bytes, without a copy
        of the message: this runs for every message, and most are events nobody here wants."""
        wanted = self._wanted
        if wanted is None:
            return _Route.PANORAMISK
        if buffer.startswith(self.factory.event_lines, start, end):  # the usual case
            if self.responses and buffer.find(b"ActionID:", start, end) >= 0:
                return _Route.PANORAMISK  # maybe part of an action's answer
            return _Route.EVENT
        if buffer.startswith(_EVENT, start, end):
            name_at = start + len(_EVENT)
        else:
            line = buffer.find(_EVENT_LINE, start, end)
            if line < 0:
                return _Route.PANORAMISK  # a response, or garbage (counted there)
            name_at = line + len(_EVENT_LINE)
        name_end = buffer.find(b"\r\n", name_at, end)
        name = bytes(buffer[name_at : end if name_end < 0 else name_end]).strip().lower()
        if name in _SPECIAL_EVENTS or (
            self.responses and buffer.find(b"ActionID:", start, end) >= 0
        ):
            return _Route.PANORAMISK  # Shutdown, or maybe part of an action's answer
        return _Route.EVENT if name in wanted else _Route.IGNORE

    def _skip_oversized(self) -> None:
        if not self._skipping:
            self._skipping = True
            self.factory.discard("oversized")
        # Keep what may be the start of the blank line that ends the message.
        del self._buffer[: -(len(_END) - 1)]
        self._scanned = 0

    def _parse(self, raw: bytearray) -> None:
        text = _decode(raw).strip()  # strip: Asterisk may send an extra CRLF between messages
        if not text:
            return
        try:
            message = Message.from_line(text)
        except Exception:  # panoramisk choked on it: as good as garbage
            message = None
        if message is None:  # neither an Event nor a Response header
            self.factory.discard("garbage")
            return
        try:
            self.handle_message(message)
        except Exception as exc:  # one bad message must not end the link
            self.factory.fault(exc)

    def _take_banner(self) -> bool:
        line, newline, rest = self._buffer.partition(b"\n")
        if not newline:
            if len(self._buffer) > _MAX_BANNER_BYTES:
                self.factory.fail("not an AMI server: no banner")
            return False
        line = line.rstrip(b"\r")
        if not line.startswith(BANNER_PREFIX):
            self.factory.fail(f"not an AMI server: it said {_decode(line[:60])!r}")
            return False
        self.version = _decode(line.removeprefix(BANNER_PREFIX)).strip()
        self._buffer = rest
        if not self.factory.banner.done():
            self.factory.banner.set_result(self.version)
        return True

    def handle_message(self, message: Any) -> None:
        action = self.responses.get(message.id)
        if action is None and message.action_id:
            action = self.responses.get(message.action_id)
        if action is not None:
            if _is_login(action) and str(message.get("Response", "")).lower() == "success":
                self.factory.logged_in = True  # before the next message: events may follow
            if action.add_message(message):
                self.factory.forget(action.future)
        elif "event" in message:
            if message["event"].lower() == "shutdown":
                self.factory.fail("Asterisk is shutting down")
            self.factory.dispatch(message)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._flushing, self._stalled = True, False
        if self._held is not None:  # what came before the loss is read before it is reported
            self._resume(pausing=False)
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


class StagedAction(Action):  # type: ignore[misc]  # panoramisk is untyped
    """An action whose answer comes in stages: an async Originate's "successfully queued" at
    once, its OriginateResponse event when the first leg answered or failed (seconds later).

    panoramisk's ``future`` still resolves with the whole answer; ``first`` resolves with the
    first message as soon as it comes, so a caller can act on "queued" without waiting for the
    call. A cancelled ``future`` (the link lost, the action forgotten) cancels ``first``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(self._ended)

    def add_message(self, message: Any) -> bool | None:
        if not self.first.done():
            self.first.set_result(message)
        done: bool | None = super().add_message(message)
        return done

    def _ended(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() and not self.first.done():
            self.first.cancel()


def _is_login(action: Any) -> bool:
    return str(action.get("Action", "")).lower() == "login"


def _fields(text: str, names: _HeaderNames | None = None) -> dict[str, str]:
    """An event's headers, names lower-cased; as panoramisk reads them (``Name: value``
    lines), a repeated header keeping its first value. With ``names``, only those headers.

    This runs for every wanted event, a line at a time: a line's name is looked up as it is
    spelled (Asterisk spells each the same way every time), and only a wanted header's value
    is stripped and kept.
    """
    fields: dict[str, str] = {}
    if names is None:
        for line in text.split("\r\n"):
            name, colon, value = line.partition(": ")
            if colon:
                fields.setdefault(name.lower(), value.strip())
        return fields
    known = names.known
    for line in text.split("\r\n"):
        name, colon, value = line.partition(": ")
        key = known.get(name)
        if key is None:
            key = names.learn(name)
        if key and colon and key not in fields:
            fields[key] = value.strip()
    return fields


class _HeaderNames:
    """The headers an event handler reads: each spelling seen, mapped to its lower-case name
    ("" for a header not read), so a line's name is looked up rather than lower-cased."""

    __slots__ = ("known", "wanted")

    def __init__(self, wanted: Collection[str]) -> None:
        self.wanted = frozenset(wanted)
        self.known: dict[str, str] = {name: name for name in self.wanted}

    def learn(self, name: str) -> str:
        key = name.lower()
        key = key if key in self.wanted else ""
        # Bounded: a peer sending made-up names, or lines without a colon, fills no memory.
        if len(self.known) < _MAX_KNOWN_NAMES and len(name) <= _MAX_NAME_CHARS:
            self.known[name] = key
        return key


def _has_foreign(buffer: bytearray, at: int) -> bool:
    """Whether the buffer holds a blank line of bare LFs or CRs from ``at`` on."""
    lf, cr = _FOREIGN_ENDS
    return buffer.find(lf, at) >= 0 or buffer.find(cr, at) >= 0


def _decode(raw: bytes | bytearray) -> str:
    """UTF-8, as Asterisk sends; else line by line, a line that is not UTF-8 as Latin-1.

    Latin-1 comes from an old PBX or a SIP peer sending ISO-8859-1, usually in one header: the
    other lines, say a UTF-8 ConnectedLineName, keep their letters.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        lines = raw.split(b"\r\n")
        if len(lines) == 1:
            return raw.decode("latin-1")  # never fails: every byte is a Latin-1 character
        return "\r\n".join(map(_decode, lines))
