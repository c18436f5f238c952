"""The recordings' wiring: the signing key, the links the journal asks for just before it
sends a record, and the server the public listener mounts (``Recordings.routes``).

The journal's sender knows only its ``LinkResolver`` hook; this adapter turns a record into
what :mod:`kommo_callerid.recordings` needs, so neither room imports the other's types.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web

from kommo_callerid.core.config import Config
from kommo_callerid.journal.entry import JournalEntry
from kommo_callerid.recordings.keys import SigningKeyError, signing_key
from kommo_callerid.recordings.links import GRACE, RecordedCall, RecordingLinks, Resolution
from kommo_callerid.recordings.serve import RecordingServer, recording_routes

log = structlog.get_logger(__name__)


def public_url(config: Config) -> str:
    """``[public] url``: where browsers reach the daemon (the links' base)."""
    return config.public.url


class Recordings:
    """Built at start-up (the key is read or made only when ``directory`` is set); SIGHUP
    hands it the new configuration."""

    def __init__(
        self,
        config: Config,
        *,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        journal_clock: Callable[[], float] | None = None,
        grace: float = GRACE,
    ) -> None:
        """``clock``: the wall clock that judges a fetched link's expiry. ``journal_clock``:
        the journal sender's (its records' ``recorded_at``), for the grace and the expiry a
        new link gets; None: ``clock``."""
        #: The links' base; None: ``[public] url`` (tests give their own listener's).
        self._base_url = base_url
        key = self._key(config)
        base = self._base(config)
        self.links = RecordingLinks(
            config.recordings, key, base, clock=journal_clock or clock, grace=grace
        )
        self.server = RecordingServer(config.recordings, key, clock=clock)
        self._on = bool(key) and bool(base)

    def _base(self, config: Config) -> str:
        return public_url(config) if self._base_url is None else self._base_url

    @staticmethod
    def _key(config: Config) -> bytes:
        """Raises :class:`~kommo_callerid.recordings.keys.SigningKeyError` (a sentence)."""
        if config.recordings.directory is None:
            return b""
        return signing_key(config.recordings.key, config.kommo.token_file.parent)

    def reconfigure(self, config: Config) -> None:
        """A new directory, pattern, ``link_ttl`` or key (a rotated one kills older links).
        A key that cannot be had keeps the running settings, said once per reload."""
        try:
            key = self._key(config)
        except SigningKeyError as exc:
            log.error("recordings.unusable", detail=str(exc))
            return
        self.links.reconfigure(config.recordings, key, self._base(config))
        self.server.reconfigure(config.recordings, key)
        self._on = bool(key) and bool(self._base(config))

    def routes(self) -> list[web.RouteDef]:
        return recording_routes(self.server)

    async def settle(
        self, entries: list[JournalEntry]
    ) -> tuple[list[JournalEntry], list[JournalEntry]]:
        """The journal's hook: (records to send now, with their links; records whose file may
        still appear, with ``next_try`` moved to the end of the grace)."""
        if not self._on:
            return entries, []
        ready, later = [], []
        for entry in entries:
            if self.links.ours(entry.link):  # signed on an earlier attempt
                ready.append(entry)
                continue
            try:
                found = await self.links.resolve(as_recorded(entry))
            except Exception:  # a file-system surprise never holds the journal back
                log.exception("recordings.error", call_id=entry.call_id)
                found = Resolution("")
            if found.unlinked:
                log.warning(
                    "recordings.unlinked",
                    call_id=entry.call_id,
                    reason=found.unlinked,
                    hint="the file Asterisk named (MIXMONITOR_FILENAME) is not found by "
                    "[recordings] pattern with the call's Uniqueids: the link names no path, "
                    "so the call goes without one; make pattern match how files are named",
                )
            if found.retry_at is not None:
                later.append(replace(entry, next_try=found.retry_at))
            else:  # [recordings] directory set: its link replaces recording_url
                ready.append(replace(entry, link=found.link))
        return ready, later


def as_recorded(entry: JournalEntry) -> RecordedCall:
    return RecordedCall(
        # Most likely first; a record written before schema 2 has only the Linkedid and
        # the root's Uniqueid.
        uniqueids=tuple(dict.fromkeys((*entry.uniqueids, entry.linkedid, entry.uniqueid))),
        started_at=entry.started_at,
        ended_at=entry.ended_at,
        recorded_at=entry.recorded_at,
        recording_file=entry.recording_file,
    )


def recordings_view(recordings: Recordings | None) -> dict[str, Any]:
    """The /metrics and ``stats`` counters (nothing while recordings are off)."""
    if recordings is None or not recordings.server.key_set:
        return {}
    stats = recordings.server.stats
    return {
        "recordings_enabled": True,
        "recordings_served": {str(status): n for status, n in stats.served.items()},
        "recordings_refused": dict(stats.refused),
    }
