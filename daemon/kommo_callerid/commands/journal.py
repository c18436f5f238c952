"""``kommo-callerid journal``: the call journal's records for an operator, newest first, as a
table (or ``--json`` for scripts); ``kommo-callerid journal retry`` makes dropped records
pending again, for the running daemon to send.

Reads the outbox directly (SQLite allows a reader beside the daemon's writer in WAL mode), so
it works whether the daemon runs or not.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from kommo_callerid.core.config import Config
from kommo_callerid.core.logging import json_for_terminal
from kommo_callerid.core.models import CallStatus
from kommo_callerid.journal.entry import JournalEntry, State
from kommo_callerid.journal.outbox import Outbox, OutboxError

EXIT_OK, EXIT_FAILURE = 0, 1
LIMIT = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATUS_WORDS = {
    CallStatus.ANSWERED: "answered",
    CallStatus.BUSY: "busy",
    CallStatus.NO_ANSWER: "missed",
    CallStatus.INVALID_NUMBER: "invalid number",
}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` as seconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def show(
    config: Config,
    *,
    pending: bool,
    failed: bool,
    since: float | None,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    states = [State.PENDING, State.FOLLOWUP] if pending else []
    states += [State.DROPPED] if failed else []
    after = None if since is None else time.time() - since
    if not config.journal.database.exists():
        print(f"No call journal at {config.journal.database} yet: the daemon creates it.")
        return EXIT_OK
    try:
        outbox = Outbox.open(config.journal.database, create=False)
    except OutboxError as exc:
        print(f"kommo-callerid: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        entries = outbox.listing(states=states, since=after, limit=LIMIT)
        counts = outbox.counts()
    finally:
        outbox.close()
    if as_json:
        out.write(json_for_terminal([_as_json(entry) for entry in entries], indent=1))
        out.write("\n")
    else:
        out.write(render_table(entries, counts))
    return EXIT_OK


def retry(config: Config, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        outbox = Outbox.open(config.journal.database, create=False)
    except OutboxError as exc:
        print(f"kommo-callerid: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        count = outbox.retry_dropped(time.time())
    finally:
        outbox.close()
    noun, them = ("record is", "it") if count == 1 else ("records are", "them")
    out.write(f"{count} dropped {noun} pending again; the running daemon sends {them} ")
    out.write("within a minute.\n")
    return EXIT_OK


def render_table(entries: Sequence[JournalEntry], counts: dict[str, int]) -> str:
    header = ("WHEN", "CALL", "DIRECTION", "STATUS", "DURATION", "ANSWERED BY", "PHONE", "KOMMO")
    rows = [header, *(_row(entry) for entry in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    summary = (
        f"{len(entries)} shown; in the outbox: {counts['pending']} pending, "
        f"{counts['sent']} sent, {counts['dropped']} dropped"
    )
    return "\n".join([*lines, "", summary, ""])


def kommo_state(entry: JournalEntry) -> str:
    """What Kommo made of the record, in a few words."""
    if entry.state is State.SENT:
        text = f"sent to {entry.entity_type} {entry.entity_id}" if entry.entity_id else "sent"
        if entry.lead_id is not None:
            text = f"sent: incoming lead {entry.lead_id}"
        if entry.task_id is not None:
            text += f", task {entry.task_id}"
        return f"{text} ({entry.detail})" if entry.detail else text
    if entry.state is State.DROPPED:
        return f"dropped ({entry.reason}): {entry.detail}"
    waiting = "incoming lead" if entry.followup and entry.followup.value == "unsorted" else ""
    if entry.state is State.FOLLOWUP:
        waiting = waiting or "call-back task"
        return f"sent to {entry.entity_type or 'Kommo'} {entry.entity_id or ''}; {waiting} pending"
    if entry.attempts == 0:
        return "pending"
    at = time.strftime("%H:%M:%S", time.localtime(entry.next_try))
    return f"pending (try {entry.attempts + 1} at {at}; last: {entry.detail})"


def _row(entry: JournalEntry) -> tuple[str, ...]:
    answered = entry.answered_by or ("-" if entry.direction.value == "inbound" else "")
    if entry.direction.value == "outbound":
        answered = f"from {entry.extension or '?'}"
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.started_at)),
        entry.call_id,
        entry.direction.value,
        _STATUS_WORDS.get(entry.status, str(int(entry.status))),
        f"{entry.duration // 60}:{entry.duration % 60:02d}",
        answered,
        entry.phone,
        kommo_state(entry),
    )


def _as_json(entry: JournalEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["direction"] = entry.direction.value
    data["status"] = int(entry.status)
    data["state"] = entry.state.value
    data["followup"] = entry.followup.value if entry.followup else None
    data["kommo"] = kommo_state(entry)
    return data
