"""A finished call's recording link, made when its journal record is about to be sent.

The journal writes a record first (durability wins) and asks for the link only when it
sends: :meth:`RecordingLinks.resolve` looks for the file (each of the call's Uniqueids, on
the day the call started and the day it ended) and signs ``{url}/recordings/<token>`` when
it is there. MixMonitor's file exists from the answer, but a post-processing step (FreePBX's
``MIXMON_POST``: a conversion, a move) may make it appear a moment after the hangup, so a
record younger than :data:`GRACE` seconds whose file is not found yet is sent later, not
without its link. After that it goes without one.

The clock is the journal sender's (Unix time that a step of the wall clock does not move):
``recorded_at`` was written with it, so the grace is measured on one clock.

When Asterisk named the file (``MIXMONITOR_FILENAME``) that file is linked, by the Uniqueid
and day that let ``pattern`` find it again; a named file that is not there (a MIXMON_POST
conversion replaced it) or lies outside ``directory`` leaves the search to ``pattern``, as
without the name. A named file that ``pattern`` cannot find gets no link (the link names no
path, so it could not be served): :attr:`Resolution.unlinked` says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.locate import Found, Unnamed, find_any, find_named
from kommo_callerid.recordings.token import Claim, sign

#: Seconds after a call's record was written that its file may still appear.
GRACE = 10.0


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """What finding a call's file needs (the journal record's fields)."""

    #: The call's Uniqueids, most likely first (the Linkedid, the root channel, the rest).
    uniqueids: tuple[str, ...]
    started_at: float
    ended_at: float
    #: When the record was written (the grace counts from here).
    recorded_at: float
    #: The file Asterisk named (``MIXMONITOR_FILENAME``); "" when it did not say.
    recording_file: str = ""


@dataclass(frozen=True, slots=True)
class Resolution:
    #: The signed link; "" when there is none (yet).
    link: str
    #: No file yet, but one may come: ask again at this Unix time. None: the answer is final.
    retry_at: float | None = None
    #: Why a file Asterisk named gets no link ("" when there is no such file).
    unlinked: str = ""


class RecordingLinks:
    def __init__(
        self,
        config: RecordingsConfig,
        key: bytes,
        base_url: str,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = GRACE,
    ) -> None:
        self._config = config
        self._key = key
        self._base = base_url.rstrip("/")
        self._clock = clock
        self.grace = grace

    def reconfigure(self, config: RecordingsConfig, key: bytes, base_url: str) -> None:
        self._config, self._key, self._base = config, key, base_url.rstrip("/")

    def ours(self, link: str) -> bool:
        """A link this daemon signed (an earlier attempt to send the record made it)."""
        return bool(self._base) and link.startswith(f"{self._base}/recordings/")

    async def resolve(self, call: RecordedCall) -> Resolution:
        directory = self._config.directory
        if directory is None or not self._base:
            return Resolution("")
        days = _days(call.started_at, call.ended_at)
        found = await asyncio.to_thread(_locate, Path(directory), self._config.pattern, call, days)
        now = self._clock()
        if isinstance(found, Unnamed):
            return Resolution("", unlinked=str(found))
        if found is None:
            waiting = now < call.recorded_at + self.grace
            return Resolution("", call.recorded_at + self.grace if waiting else None)
        return Resolution(self.link(found, now))

    def link(self, found: Found, now: float) -> str:
        ttl = self._config.link_ttl
        expires = int(now + ttl) + 1 if ttl > 0 else 0
        token = sign(self._key, Claim(found.uniqueid, found.day, expires))
        return f"{self._base}/recordings/{token}"


def _locate(
    directory: Path, pattern: str, call: RecordedCall, days: list[date]
) -> Found | Unnamed | None:
    """The named file when Asterisk named one that is there; else ``pattern``'s search."""
    if call.recording_file:
        named = find_named(directory, pattern, call.recording_file, call.uniqueids, days)
        if named is not Unnamed.MISSING and named is not Unnamed.OUTSIDE:
            return named
    return find_any(directory, pattern, call.uniqueids, days)


def _days(started_at: float, ended_at: float) -> list[date]:
    """The local days a file of the call may be filed under (Asterisk's time zone is the
    host's): the start's, and the end's when the call crossed midnight."""
    first = datetime.fromtimestamp(started_at).date()
    last = datetime.fromtimestamp(max(started_at, ended_at)).date()
    return [first] if last == first else [first, last]
