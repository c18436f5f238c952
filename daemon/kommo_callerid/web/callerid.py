"""``GET /callerid``: a caller's CRM name for an Asterisk dialplan ``CURL()``, within a bound.

A cached number answers at once. Otherwise the lookup gets ``callerid_timeout`` seconds: the
dialplan must not hold a ringing call for Kommo, so a slower lookup answers an empty name at
once, but is kept running (owned here, cancelled at close) so the next ring of the same
number finds the cache warm. Every failure is an empty name, never an error: the dialplan
has no use for one.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections import Counter
from enum import StrEnum
from functools import partial
from typing import Protocol

import structlog

from kommo_callerid.calls.detector import digit_count, normalize_number
from kommo_callerid.core.config import CallsConfig, HttpConfig
from kommo_callerid.core.models import KommoError, LookupResult

log = structlog.get_logger(__name__)

#: Lookups left running past their answer; beyond this an uncached number answers empty at
#: once, so a flood of distinct numbers cannot queue unbounded work in front of Kommo.
MAX_BACKGROUND_LOOKUPS = 100


class Answer(StrEnum):
    """How a /callerid request ended (the ``result`` label of its counter)."""

    FOUND = "found"
    UNKNOWN = "unknown"
    INVALID = "invalid"
    TIMEOUT = "timeout"
    ERROR = "error"
    BUSY = "busy"


class Lookup(Protocol):
    """What /callerid needs of ``kommo.KommoClient`` (cached and single-flight)."""

    async def lookup(self, number: str) -> LookupResult: ...


def sanitize_name(name: str, max_length: int) -> str:
    """Safe for a SIP header: control/format characters (Unicode C*) and line breaks become
    spaces, runs of whitespace one space, capped at ``max_length`` characters."""
    visible = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in name)
    return " ".join(visible.split())[:max_length].rstrip()


def display_name(result: LookupResult, max_length: int) -> str:
    """The person before the deal: a lead's contact says more on a phone screen than the lead."""
    for entity in (result.phone_entity, result.entity):
        if entity is not None:
            name = sanitize_name(entity.name, max_length)
            if name:
                return name
    return ""


class CallerIdService:
    def __init__(self, kommo: Lookup, calls: CallsConfig, http: HttpConfig) -> None:
        self._kommo = kommo
        self._region = calls.default_region
        self._min_digits = calls.min_digits
        self._timeout = http.callerid_timeout
        self._max_length = http.callerid_max_length
        #: Lookups by number, until they finish; a repeated number joins the running one.
        self._pending: dict[str, asyncio.Task[LookupResult]] = {}
        self.answers: Counter[Answer] = Counter()

    @property
    def background_lookups(self) -> int:
        return len(self._pending)

    def reconfigure(self, calls: CallsConfig) -> None:
        """A reloaded ``[calls]`` (SIGHUP): how numbers are read from now on."""
        self._region = calls.default_region
        self._min_digits = calls.min_digits

    async def name_for(self, raw: str) -> str:
        """The sanitised name for a caller number; empty when unknown, slow, invalid or failed."""
        answer, name = await self._resolve(raw)
        self.answers[answer] += 1
        log.debug("http.callerid", number=raw[:40], result=str(answer))
        return name

    async def close(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resolve(self, raw: str) -> tuple[Answer, str]:
        if raw.startswith(" "):  # a dialplan CURL() seldom URL-encodes: "+" arrives as " "
            raw = "+" + raw.lstrip()
        number = normalize_number(raw, self._region)
        if number is None or digit_count(number) < self._min_digits:
            return Answer.INVALID, ""
        task = self._pending.get(number)
        if task is None:
            if len(self._pending) >= MAX_BACKGROUND_LOOKUPS:
                return Answer.BUSY, ""
            task = self._start(number)
        # asyncio.wait, not wait_for: on timeout the lookup must go on, not be cancelled.
        done, _ = await asyncio.wait({task}, timeout=self._timeout)
        if not done:
            return Answer.TIMEOUT, ""
        if task.cancelled() or task.exception() is not None:
            return Answer.ERROR, ""  # a KommoError is already logged as kommo.error
        name = display_name(task.result(), self._max_length)
        return (Answer.FOUND if name else Answer.UNKNOWN), name

    def _start(self, number: str) -> asyncio.Task[LookupResult]:
        task = asyncio.create_task(self._kommo.lookup(number), name=f"callerid-{number}")
        self._pending[number] = task
        task.add_done_callback(partial(self._finished, number))
        return task

    def _finished(self, number: str, task: asyncio.Task[LookupResult]) -> None:
        if self._pending.get(number) is task:
            del self._pending[number]
        if task.cancelled():
            return
        exc = task.exception()  # retrieved, so an answer nobody waited for is not a warning
        if exc is not None and not isinstance(exc, KommoError):
            log.error("http.callerid_failed", exc_info=exc)
