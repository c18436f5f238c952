"""The phone book's Kommo endpoints: one page of ``GET /api/v4/{contacts,companies,leads,
customers}``, oldest change first, 250 a page, as :class:`~core.phonebook_models.BookPage`.

Every request goes through the one transport with :attr:`Priority.SYNC`, the lowest: a
notification, a lookup and the journal all go before it. It also keeps its own pace, at most
``rate_limit - HEADROOM`` requests a second (as the journal does), so a full pass of a large
account never leaves a notification facing a full window. A few attempts per page; the sync
itself backs off between failed passes.
"""

from __future__ import annotations

import asyncio
import time

from kommo_callerid.core.models import DeadlineReached, KommoError
from kommo_callerid.core.phonebook_models import BookKind, BookPage, ListUnavailable
from kommo_callerid.kommo.limits import Clock, Priority, Sleep
from kommo_callerid.kommo.parse import BadShape, error_detail, loads_json
from kommo_callerid.kommo.phonebook_parse import parse_page
from kommo_callerid.kommo.transport import MAX_BODY_BYTES, KommoTransport

PAGE_LIMIT = 250
#: How long a sync request may wait behind everything else for a slot.
QUEUE_WAIT = 30.0
ATTEMPTS = 3
HEADROOM = 2.0
#: What a list answers on an account that has it switched off (customers, mostly).
SWITCHED_OFF = frozenset({402, 404})


class KommoDirectory:
    """Fills the phone book's ``Directory`` protocol with Kommo requests."""

    def __init__(
        self,
        transport: KommoTransport,
        *,
        rate_limit: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = transport
        self._clock = clock
        self._sleep = sleep
        self._interval = 1.0 / max(rate_limit - HEADROOM, min(rate_limit, 1.0))
        self._last_request = float("-inf")

    def reconfigure(self, rate_limit: float) -> None:
        self._interval = 1.0 / max(rate_limit - HEADROOM, min(rate_limit, 1.0))

    async def page(self, kind: BookKind, *, since: int | None, page: int) -> BookPage:
        """Page ``page`` (1-based) of ``kind`` changed at or after ``since`` (None: all);
        raises :class:`KommoError` or :class:`ListUnavailable`."""
        params = [("limit", str(PAGE_LIMIT)), ("page", str(page)), ("order[updated_at]", "asc")]
        if since is not None:
            params.append(("filter[updated_at][from]", str(since)))
        return await self._get(kind, params, page)

    async def by_ids(self, kind: BookKind, ids: tuple[int, ...]) -> BookPage:
        """Those of ``ids`` (at most :data:`PAGE_LIMIT`) Kommo still has, as one page."""
        params = [("limit", str(PAGE_LIMIT)), ("page", "1")]
        params += [("filter[id][]", str(id_)) for id_ in ids[:PAGE_LIMIT]]
        found = await self._get(kind, params, 1)
        return BookPage(kind, found.records, None)

    async def _get(self, kind: BookKind, params: list[tuple[str, str]], page: int) -> BookPage:
        path = f"/api/v4/{kind.value}"
        if kind.owns_phones:
            params.append(("with", "leads,customers"))
        wait = self._last_request + self._interval - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._last_request = self._clock()
        try:
            response = await self._http.request(
                "GET",
                path,
                params=params,
                deadline=self._clock() + QUEUE_WAIT,
                priority=Priority.SYNC,
                max_attempts=ATTEMPTS,
            )
        except DeadlineReached as exc:
            raise KommoError(exc.status, path, exc.detail) from None
        if response.status in SWITCHED_OFF and kind is BookKind.CUSTOMERS:
            raise ListUnavailable(error_detail(response))
        if not 200 <= response.status < 300:
            raise KommoError(response.status, path, error_detail(response))
        if response.oversized:
            raise KommoError(response.status, path, f"a page larger than {MAX_BODY_BYTES} bytes")
        data = None
        if response.status != 204 and response.body.strip():
            try:
                data = loads_json(response.body)
            except ValueError:
                raise KommoError(response.status, path, "invalid JSON") from None
        try:
            return parse_page(kind, data, page)
        except BadShape as exc:
            raise KommoError(response.status, path, f"unexpected answer: {exc}") from None
