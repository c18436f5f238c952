"""A finished call's recording link, made when its journal record is about to be sent.

The journal writes a record first (durability wins) and asks for the link only when it
sends: :meth:`RecordingLinks.resolve` looks for the file (each of the call's Uniqueids, on
the day the call started and the day it ended) and signs ``{url}/recordings/<token>`` when
it is there. MixMonitor's file exists from the answer, but a post-processing step (FreePBX's
``MIXMON_POST``: a conversion, a move) may make it appear a moment after the hangup, so a
record younger than :data:`GRACE` seconds whose file is not found yet is sent later, not
without its link. After that it goes without one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.locate import Found, find_any
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


@dataclass(frozen=True, slots=True)
class Resolution:
    #: The signed link; "" when there is none (yet).
    link: str
    #: No file yet, but one may come: ask again at this Unix time. None: the answer is final.
    retry_at: float | None = None


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
        found = await asyncio.to_thread(
            find_any, Path(directory), self._config.pattern, call.uniqueids, days
        )
        now = self._clock()
        if found is None:
            waiting = now < call.recorded_at + self.grace
            return Resolution("", call.recorded_at + self.grace if waiting else None)
        return Resolution(self.link(found, now))

    def link(self, found: Found, now: float) -> str:
        ttl = self._config.link_ttl
        expires = int(now + ttl) + 1 if ttl > 0 else 0
        token = sign(self._key, Claim(found.uniqueid, found.day, expires))
        return f"{self._base}/recordings/{token}"


def _days(started_at: float, ended_at: float) -> list[date]:
    """The local days a file of the call may be filed under (Asterisk's time zone is the
    host's): the start's, and the end's when the call crossed midnight."""
    first = datetime.fromtimestamp(started_at).date()
    last = datetime.fromtimestamp(max(started_at, ended_at)).date()
    return [first] if last == first else [first, last]
