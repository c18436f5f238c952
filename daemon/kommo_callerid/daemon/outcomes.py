"""Where finished calls go: the call journal's sink, behind a one-method protocol.

The outcome tracker (``calls/outcome.py``) says what each call was; the daemon hands every
:class:`~kommo_callerid.core.models.FinishedCall` to a :class:`JournalSink`. The journal's
outbox plugs in here; until then (and in tests that do not care) :class:`DebugJournalSink`
only logs the call at debug level.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from kommo_callerid.core.models import FinishedCall

log = structlog.get_logger(__name__)


class JournalSink(Protocol):
    def record(self, call: FinishedCall) -> None:
        """Take one finished call; called on the event loop, so it must not block."""


class DebugJournalSink:
    """The default sink: a ``call.finished`` debug line per call, nothing kept."""

    def record(self, call: FinishedCall) -> None:
        log.debug(
            "call.finished",
            call_id=call.call_id,
            direction=call.direction.value,
            status=int(call.status),
            duration=call.duration,
            answered_by=call.answered_by,
            result=call.result,
        )
