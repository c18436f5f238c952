"""Finding a call's recording under ``[recordings] directory`` (blocking file-system calls:
run them in a thread).

``pattern`` is expanded with the day's {yyyy} {mm} {dd} and one Uniqueid (glob-escaped, and
only ever a Uniqueid's characters), then globbed relative to ``directory``. Every match is
resolved (symlinks followed) and kept only when it is a regular audio file that stays inside
the resolved ``directory``: a symlink leading out, or a name that is no audio type, is never
linked nor served. No path from a request is ever joined to ``directory``; a request brings
a signed Uniqueid and day, and the pattern makes the path.

When Asterisk named the file (``MIXMONITOR_FILENAME``), :func:`find_named` looks for the
Uniqueid and day with which ``pattern`` finds exactly that file again: the link still names
no path, and a file the pattern cannot find is not linked (it could not be served).
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path

from kommo_callerid.recordings.token import UNIQUEID, Refusal

#: The audio types served, by extension (anything else under ``directory`` never is).
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".gsm": "audio/x-gsm",
}


#: Dates a file's path may carry: ``2026/12/06`` (FreePBX's folders), ``20261206`` (its names).
_DATES = re.compile(r"(?<!\d)(\d{4})/?(\d{2})/?(\d{2})(?!\d)")


class Unnamed(StrEnum):
    """Why the file Asterisk named gets no link."""

    MISSING = "missing"  # not there (yet): a MIXMON_POST step may convert or move it
    OUTSIDE = "outside"  # outside ``directory`` (a symlink leading out too), or no audio file
    UNFIT = "unfit"  # there, but ``pattern`` finds it with none of the call's Uniqueids


@dataclass(frozen=True, slots=True)
class Found:
    #: The resolved file (inside the resolved ``directory``).
    path: Path
    content_type: str
    uniqueid: str
    day: date


def find(directory: Path, pattern: str, uniqueid: str, day: date) -> Found | Refusal:
    """The recording named by (``uniqueid``, ``day``): the first match in name order that is
    an audio file inside ``directory``; else ``PATH`` when matches exist but lead out or are
    no audio files, ``MISSING`` when nothing matches."""
    if not UNIQUEID.fullmatch(uniqueid):
        return Refusal.PATH
    try:
        root = directory.resolve(strict=True)
    except (OSError, RuntimeError):
        return Refusal.MISSING
    relative = pattern.format(
        yyyy=f"{day.year:04d}",
        mm=f"{day.month:02d}",
        dd=f"{day.day:02d}",
        uniqueid=glob.escape(uniqueid),
    )
    matches = sorted(root.glob(relative))
    for match in matches:
        kept = _inside(root, match)
        if kept is not None:
            return Found(kept, AUDIO_TYPES[kept.suffix.lower()], uniqueid, day)
    return Refusal.PATH if matches else Refusal.MISSING


def find_any(
    directory: Path, pattern: str, uniqueids: Iterable[str], days: Iterable[date]
) -> Found | None:
    """The first recording found for any of the call's Uniqueids on any of its days."""
    days = list(days)
    for uniqueid in dict.fromkeys(uniqueids):
        for day in days:
            found = find(directory, pattern, uniqueid, day)
            if isinstance(found, Found):
                return found
    return None


def _inside(root: Path, match: Path) -> Path | None:
    try:
        real = match.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):  # gone, a loop of symlinks
        return None
    audio = real.suffix.lower() in AUDIO_TYPES
    if not audio or not real.is_relative_to(root) or not stat.S_ISREG(mode):
        return None
    return real


def find_named(
    directory: Path, pattern: str, named: str, uniqueids: Iterable[str], days: Iterable[date]
) -> Found | Unnamed:
    """The file MixMonitor wrote (``named``: absolute, or relative to ``directory``) as the
    Uniqueid and day with which :func:`find` gives exactly that file; else why not."""
    try:
        root = directory.resolve(strict=True)
    except (OSError, RuntimeError):
        return Unnamed.MISSING
    candidate = root / named  # an absolute ``named`` replaces root
    if not os.path.lexists(candidate):
        return Unnamed.MISSING
    real = _inside(root, candidate)
    if real is None:
        return Unnamed.OUTSIDE
    relative = real.relative_to(root).as_posix()
    # {uniqueid} is in every pattern, so the file's Uniqueid is in its path: FreePBX's name
    # ends with it (``...-1765000000.123.wav``), which covers a channel the call did not list.
    tail = real.stem.rsplit("-", 1)[-1]
    ids = [u for u in dict.fromkeys((*uniqueids, tail)) if UNIQUEID.fullmatch(u) and u in relative]
    for day in dict.fromkeys((*days, *_dates(relative))):
        for uniqueid in ids:
            found = find(root, pattern, uniqueid, day)
            if isinstance(found, Found) and found.path == real:
                return found
    return Unnamed.UNFIT


def _dates(relative: str) -> list[date]:
    found = []
    for match in _DATES.finditer(relative):
        try:
            found.append(date(*(int(part) for part in match.groups())))
        except ValueError:
            continue
    return found
