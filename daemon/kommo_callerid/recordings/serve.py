"""``GET``/``HEAD /recordings/<token>``: a recording, for a link this daemon signed.

The token is checked first (shape, then an HMAC compared in constant time, then the expiry);
only a verified Uniqueid and day reach :func:`~.locate.find`, which makes the path from
``pattern`` and keeps it inside ``directory``. aiohttp's ``FileResponse`` streams the file
and answers ``Range`` (206) and conditional requests; the response is sent while a download
slot is held, so at most ``max_downloads`` files are open at once (a request that waits too
long for a slot gets 503). Nothing else under ``/recordings`` answers: no listing.

CORS for Kommo's origin is the public listener's middleware (it knows the allowed origins).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.locate import Found, find
from kommo_callerid.recordings.token import Refusal, verify

log = structlog.get_logger(__name__)

#: Files sent at once; more wait (up to SLOT_WAIT seconds) for a slot.
MAX_DOWNLOADS = 32
SLOT_WAIT = 10.0
#: A recording never changes once written; the browser may keep it, no shared cache may.
CACHE_CONTROL = "private, max-age=86400"
STATUS = {
    Refusal.SIGNATURE: 403,
    Refusal.EXPIRED: 410,
    Refusal.PATH: 404,
    Refusal.MISSING: 404,
}


@dataclass
class RecordingStats:
    #: Answered with the file (by status: 200, 206, 304, 412, 416 ...).
    served: Counter[int] = field(default_factory=Counter)
    #: Refused (by ``recordings.refused`` reason).
    refused: Counter[str] = field(default_factory=Counter)
    #: 503: no download slot in time.
    busy: int = 0


class RecordingServer:
    def __init__(
        self,
        config: RecordingsConfig,
        key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        max_downloads: int = MAX_DOWNLOADS,
        slot_wait: float = SLOT_WAIT,
    ) -> None:
        self._config = config
        self._key = key
        self._clock = clock
        self._slots = asyncio.Semaphore(max_downloads)
        self._slot_wait = slot_wait
        self.stats = RecordingStats()

    @property
    def key_set(self) -> bool:
        return bool(self._key)

    def reconfigure(self, config: RecordingsConfig, key: bytes) -> None:
        """SIGHUP: a new directory, pattern or key holds for the next request."""
        self._config, self._key = config, key

    async def handle(self, request: web.Request) -> web.StreamResponse:
        directory = self._config.directory
        if directory is None or not self._key:  # off (a reload may switch it off)
            return self._refuse(Refusal.MISSING)
        claim = verify(self._key, request.match_info.get("token", ""), self._clock())
        if isinstance(claim, Refusal):
            return self._refuse(claim)
        found = await asyncio.to_thread(
            find, Path(directory), self._config.pattern, claim.uniqueid, claim.day
        )
        if isinstance(found, Refusal):
            return self._refuse(found, uniqueid=claim.uniqueid)
        try:
            async with asyncio.timeout(self._slot_wait):
                await self._slots.acquire()
        except TimeoutError:
            self.stats.busy += 1
            return web.Response(status=503, headers={"Retry-After": "5"})
        try:
            return await self._send(request, found)
        finally:
            self._slots.release()

    async def _send(self, request: web.Request, found: Found) -> web.StreamResponse:
        response = _PreparedOnce(
            found.path,
            chunk_size=CHUNK,
            headers={
                "Content-Type": found.content_type,
                "Cache-Control": CACHE_CONTROL,
                "X-Content-Type-Options": "nosniff",
            },
        )
        await response.prepare(request)  # streams the body: the slot is held until it is sent
        self.stats.served[response.status] += 1
        return response

    def _refuse(self, reason: Refusal, *, uniqueid: str | None = None) -> web.Response:
        self.stats.refused[str(reason)] += 1
        # Never the token: its signature is a secret (the contract's log rule).
        log.info("recordings.refused", reason=str(reason), uniqueid=uniqueid)
        return web.Response(status=STATUS[reason])


#: Bytes read and written at a time: each of the 32 downloads holds about this much (aiohttp's
#: default, 256 KiB, made 20 concurrent downloads of one file cost 25.6 MiB of RSS).
CHUNK = 64 * 1024


class _PreparedOnce(web.FileResponse):
    """aiohttp prepares a handler's response again after the handler returns; a
    ``FileResponse`` prepared in the handler (to hold the download slot while it streams)
    would then open and send its file a second time.

    The file goes out in chunks through aiohttp's writer, never ``loop.sendfile``: that
    bypasses the connection's protocol (kernel ``sendfile`` in plain HTTP; under TLS
    asyncio's fallback swaps in a protocol of its own, which waits for a drain without end
    and breaks on a client gone mid-file), so the listener's guard could not see a reader
    that stopped taking the file (``serving``'s ``write_timeout``)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        return await self._sendfile_fallback(writer, fobj, offset, count)


def recording_routes(server: RecordingServer) -> list[web.RouteDef]:
    """The public listener mounts these: ``GET``/``HEAD /recordings/<token>``, and a 404 for
    anything else under ``/recordings`` (a path that is no token, ``..``, a listing)."""
    return [web.get("/recordings/{token:.*}", server.handle)]
