"""Finding a call's recording under ``[recordings] directory`` (blocking file-system calls:
run them in a thread).

``pattern`` is expanded with the day's {yyyy} {mm} {dd} and one Uniqueid (glob-escaped, and
only ever a Uniqueid's characters), then globbed relative to ``directory``. Every match is
resolved (symlinks followed) and kept only when it is a regular audio file that stays inside
the resolved ``directory``: a symlink leading out, or a name that is no audio type, is never
linked nor served. No path from a request is ever joined to ``directory``; a request brings
a signed Uniqueid and day, and the pattern makes the path.
"""

from __future__ import annotations

import glob
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from kommo_callerid.recordings.token import UNIQUEID, Refusal

#: The audio types served, by extension (anything else under ``directory`` never is).
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".gsm": "audio/x-gsm",
}


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
