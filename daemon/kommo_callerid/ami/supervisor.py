"""The one owner of AMI reconnects: connect, log in, run the session, and after any loss wait
a capped, jittered, doubling delay before the next try.

panoramisk's own reconnect timer is switched off in ``ami/protocol.py``; this loop is the
only thing that ever opens a new AMI connection. A wrong secret on the very first login is a
configuration error (the daemon exits 3, so systemd does not restart-loop); after the daemon
has once been connected it is retried, because an admin may be editing manager.conf.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from kommo_callerid.ami.hints import connect_hint, is_legacy, warn_if_legacy
from kommo_callerid.core.config import AmiConfig
from kommo_callerid.core.models import (
    AmiActionRefused,
    AmiConnectionError,
    AmiLoginError,
    AmiSessionInfo,
    ChannelEvent,
)

log = structlog.get_logger(__name__)

#: A logged-in session that stayed up this long, or that delivered a call event however short
#: it was, was a working link: after its loss the next try waits only ``reconnect_min`` (a PBX
#: reload, a flaky network, a PBX that drops the link after every few events). Other sessions
#: (a server that accepts and drops at once) and failed connects or logins back off.
HEALTHY_SESSION = 1.0
#: A session this old that has seen no call event suggests an AMI user without ``read = call``.
SILENCE_WARNING_AFTER = 600.0
#: Asterisk sends only what the daemon uses; it pays for filtering, not us. DialEnd and the
#: Bridge events are for the call journal's outcome tracker (``calls/outcome.py``).
EVENT_FILTERS = (
    "Event: Newchannel",
    "Event: NewCallerid",
    "Event: Hangup",
    "Event: DialEnd",
    "Event: BridgeEnter",
    "Event: BridgeLeave",
    # Click-to-call: the answer to an async Originate is this event (with its ActionID).
    "Event: OriginateResponse",
    # Recordings: the file MixMonitor writes (a VarSet, class dialplan: only an AMI user with
    # read = dialplan gets it). Only this variable: a dialplan sets many on every call.
    "Variable: MIXMONITOR_FILENAME",
)
#: ``call``: the channel events; ``dialplan``: the VarSet above (Asterisk sends a class only
#: to a user whose ``read`` has it, so asking costs nothing without it).
EVENT_MASK = "call,dialplan"
#: AMI 1.x only: its Dial (SubEvent Begin) ties a dialled channel to its caller. Not sent to a
#: modern Asterisk, where the regex would also let DialBegin/DialEnd/DialState through.
LEGACY_FILTERS = ("Event: Dial",)


class AmiLink(Protocol):
    """What the supervisor needs of one AMI session (``ami.AmiClient``)."""

    async def connect(self) -> AmiSessionInfo: ...
    async def send_action(self, action: Mapping[str, str], timeout: float) -> dict[str, str]: ...
    async def wait_closed(self) -> str: ...
    async def list_channels(self, timeout: float) -> list[ChannelEvent]: ...
    def abort(self, reason: str) -> None: ...
    def read_recording_files(self) -> None: ...
    @property
    def events_received(self) -> int: ...
    @property
    def last_received_at(self) -> float | None: ...
    async def close(self) -> None: ...


class Backoff:
    """``reconnect_min`` doubling to ``reconnect_max``, with full jitter above the minimum."""

    def __init__(
        self, minimum: float, maximum: float, rng: Callable[[], float] = random.random
    ) -> None:
        self._min = minimum
        self._max = maximum
        self._rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        cap = min(self._max, self._min * 2.0 ** min(self.attempt - 1, 32))
        return self._min + (cap - self._min) * self._rng()

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class _SessionEnd:
    """How a session ended: why, and whether the link had worked (then no backoff)."""

    reason: str
    healthy: bool = False
    #: A connect or login that failed: said as a warning, with what to check.
    failed_to_connect: bool = False


class AmiSupervisor:
    def __init__(
        self,
        config: AmiConfig,
        link_factory: Callable[[], AmiLink],
        *,
        on_state: Callable[[bool], None] = lambda connected: None,
        on_link_lost: Callable[[], Awaitable[None]] | None = None,
        on_channels: Callable[[list[ChannelEvent] | None], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        silence_warning_after: float = SILENCE_WARNING_AFTER,
    ) -> None:
        self._config = config
        self._link_factory = link_factory
        self._on_state = on_state
        self._on_link_lost = on_link_lost
        #: Told after each login which channels are up (None: not known), so that calls
        #: that were in progress across a gap can be followed to their end.
        self._on_channels = on_channels
        self._clock = clock
        self._sleep = sleep
        self._silence_warning_after = silence_warning_after
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)
        #: Set when Asterisk left an Events/Filter action unanswered: later sessions do not
        #: send them (the client filters events itself), so a slow PBX cannot stop the link.
        self._subscribe_unanswered = False
        self.ever_connected = False
        self.connected = False
        self.reconnects = 0

    async def run(self) -> None:
        """Run until cancelled; raises AmiLoginError if the very first login is refused."""
        while True:
            end = await self._one_session()
            if end.healthy:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            fields = {"delay": round(delay, 3), "attempt": self._backoff.attempt}
            if end.failed_to_connect:
                hint = connect_hint(end.reason, self._config)
                log.warning("ami.reconnect_scheduled", reason=end.reason, hint=hint, **fields)
            else:
                log.info("ami.reconnect_scheduled", reason=end.reason, **fields)
            await self._sleep(delay)
            self.reconnects += 1

    async def _one_session(self) -> _SessionEnd:
        link = self._link_factory()
        try:
            return await self._connect_and_wait(link)
        finally:
            await link.close()
            self._set_connected(False)

    async def _connect_and_wait(self, link: AmiLink) -> _SessionEnd:
        try:
            info = await link.connect()
        except AmiLoginError as exc:
            log.error(
                "ami.login_failed",
                message=str(exc),
                username=self._config.username,
                host=self._config.host,
                port=self._config.port,
            )
            if not self.ever_connected:
                raise
            return _SessionEnd(f"login failed: {exc}")
        except (AmiConnectionError, OSError, TimeoutError) as exc:
            return _SessionEnd(f"{exc or type(exc).__name__}", failed_to_connect=True)
        started = self._now()
        self.ever_connected = True
        log.info("ami.connected", host=info.host, port=info.port, ami_version=info.ami_version)
        warn_if_legacy(info.ami_version)
        legacy = is_legacy(info.ami_version)
        try:
            await self._subscribe(link, legacy=legacy)
            self._set_connected(True)
            reason = await self._watch(link, legacy=legacy)
        except (AmiConnectionError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        log.warning("ami.disconnected", reason=reason)
        if self._on_link_lost is not None:
            await self._on_link_lost()  # state from before the gap is not trusted
        # A short session that delivered a call event worked: a PBX that drops the link after
        # every few events must not push the relogins out to reconnect_max.
        worked = link.events_received > 0 or self._now() - started >= HEALTHY_SESSION
        return _SessionEnd(reason, healthy=worked)

    async def _subscribe(self, link: AmiLink, *, legacy: bool = False) -> None:
        """The call class (and dialplan, for MixMonitor's file), and only the events the daemon
        uses (per session: re-sent).

        An action Asterisk leaves unanswered (a loaded or odd PBX) leaves its state unknown,
        say one filter of three applied: the link is dropped, and later sessions skip
        these actions and filter here instead. Never a crash.
        """
        if self._subscribe_unanswered:
            return
        timeout = self._config.ping_timeout
        actions = [{"Action": "Events", "EventMask": EVENT_MASK}]
        filters = EVENT_FILTERS + (LEGACY_FILTERS if legacy else ())
        actions += [{"Action": "Filter", "Operation": "Add", "Filter": f} for f in filters]
        for action in actions:
            try:
                answer = await link.send_action(action, timeout)
            except TimeoutError:
                self._subscribe_unanswered = True
                reason = f"no answer to {action['Action']} within {timeout:g} s"
                log.warning(
                    "ami.filter_refused",
                    reason=reason,
                    hint="reconnecting; from now on events are filtered here instead",
                )
                link.abort(reason)
                raise AmiConnectionError(reason) from None
            if action["Action"] == "Filter" and not _succeeded(answer):
                log.warning(
                    "ami.filter_refused",
                    message=answer.get("Message", ""),
                    hint="give the AMI user write = system; events are filtered here instead",
                )
                return
        link.read_recording_files()  # Asterisk sends only MixMonitor's VarSets now

    async def _watch(self, link: AmiLink, *, legacy: bool = False) -> str:
        """Wait for the link to close, pinging it; a Ping unanswered in time kills it.

        Meanwhile the channels up are listed (beside the pinger: a PBX that hangs while
        listing is found out as fast as any other).
        """
        pinger = asyncio.create_task(self._ping_until_silent(link), name="ami-ping")
        closed = asyncio.create_task(link.wait_closed(), name="ami-wait-closed")
        silence = asyncio.create_task(self._warn_if_no_calls(link), name="ami-silence")
        listing = asyncio.create_task(self._list_channels(link, legacy), name="ami-channels")
        tasks = (pinger, closed, silence, listing)
        try:
            done, _ = await asyncio.wait({pinger, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if closed in done:
            return closed.result()
        reason = pinger.result()
        link.abort(reason)
        return reason

    async def _list_channels(self, link: AmiLink, legacy: bool) -> None:
        """Tell ``on_channels`` which channels are up now (None when that cannot be known).

        AMI 1.x is not asked: its channels carry no Linkedid, and its calls are not followed.
        A lost link ends this with the session (the next session lists again).
        """
        if self._on_channels is None:
            return
        listed: list[ChannelEvent] | None = None
        if not legacy:
            try:
                listed = await link.list_channels(self._config.connect_timeout)
            except (AmiActionRefused, TimeoutError) as exc:
                log.info("ami.channels_unlisted", reason=str(exc) or type(exc).__name__)
            except AmiConnectionError:
                return
        await self._on_channels(listed)

    async def _warn_if_no_calls(self, link: AmiLink) -> None:
        """AMI cannot tell a user its read classes; a long silence is the only symptom."""
        await self._sleep(self._silence_warning_after)
        if link.events_received == 0:
            log.warning(
                "ami.no_call_events",
                minutes=round(self._silence_warning_after / 60, 1),
                hint="if calls were made, the AMI user lacks read = call in manager.conf",
            )

    async def _ping_until_silent(self, link: AmiLink) -> str:
        """A link is dead when a Ping goes unanswered AND nothing at all arrived meanwhile:
        a link busy with a flood of events is alive, though its Pong waits behind them."""
        interval, timeout = self._config.ping_interval, self._config.ping_timeout
        while True:
            await self._sleep(interval)
            sent_at = asyncio.get_running_loop().time()
            try:
                await link.send_action({"Action": "Ping"}, timeout)
            except TimeoutError:
                heard = link.last_received_at
                if heard is None or heard < sent_at:
                    return f"no answer to Ping within {timeout:g} s"

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._on_state(connected)

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()


def _succeeded(answer: Mapping[str, str]) -> bool:
    return answer.get("Response", "").lower() == "success"
