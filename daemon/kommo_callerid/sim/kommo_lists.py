"""The fake Kommo's list endpoints: ``GET /api/v4/{contacts,companies,leads,customers}``.

As Kommo documents them: ``limit`` (at most 250), ``page`` (1-based), ``with`` (contacts and
companies: ``leads``, ``customers``), ``filter[updated_at][from]`` / ``[to]`` (Unix seconds,
inclusive), ``filter[id][]``, ``order[updated_at]`` / ``order[id]``; the records in
``_embedded.<kind>``, the next page in ``_links.next.href``; nothing to list: 204.
Pure functions over a :class:`KommoDataset`; :mod:`.kommo_app` serves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from kommo_callerid.sim.kommo_data import (
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
)

Json = dict[str, Any]
LIST_KINDS = ("contacts", "companies", "leads", "customers")
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
#: Lead statuses: a pipeline stage for an active lead, won, lost.
ACTIVE_STATUS, WON_STATUS, LOST_STATUS = 47_000_001, 142, 143

_Record = FakeContact | FakeCompany | FakeLead | FakeCustomer


class BadQuery(ValueError):
    """A query Kommo would answer 400."""


def updated_at(record: _Record) -> int:
    if isinstance(record, FakeContact | FakeCompany):
        return record.updated_at or record.created_at
    return record.updated_at


def list_page(
    data: KommoDataset, kind: str, query: Mapping[str, str], ids: Sequence[str], base: str
) -> Json | None:
    """One page of ``kind`` as Kommo answers it, or None (204: nothing on this page)."""
    limit = _int(query.get("limit", str(DEFAULT_LIMIT)), "limit")
    page = _int(query.get("page", "1"), "page")
    if not 1 <= limit <= MAX_LIMIT or page < 1:
        raise BadQuery(f"limit must be 1..{MAX_LIMIT} and page at least 1")
    records: list[_Record] = list(getattr(data, kind))
    low = query.get("filter[updated_at][from]")
    high = query.get("filter[updated_at][to]")
    if low is not None:
        records = [r for r in records if updated_at(r) >= _int(low, "filter[updated_at][from]")]
    if high is not None:
        records = [r for r in records if updated_at(r) <= _int(high, "filter[updated_at][to]")]
    if ids:
        wanted = {_int(raw, "filter[id]") for raw in ids}
        records = [r for r in records if r.id in wanted]
    if query.get("order[updated_at]") in ("asc", "desc"):
        records.sort(key=lambda r: (updated_at(r), r.id))
        if query["order[updated_at]"] == "desc":
            records.reverse()
    else:
        records.sort(key=lambda r: r.id, reverse=query.get("order[id]") == "desc")
    chunk = records[(page - 1) * limit : page * limit]
    if not chunk:
        return None
    with_ = set(query.get("with", "").split(","))
    links = {"self": {"href": _href(base, kind, query, ids, page)}}
    if page * limit < len(records):
        links["next"] = {"href": _href(base, kind, query, ids, page + 1)}
    deals = _deals_by_owner(data, kind == "companies") if kind in LIST_KINDS[:2] else {}
    items = [_record_json(r, with_, deals) for r in chunk]
    return {"_page": page, "_links": links, "_embedded": {kind: items}}


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None


def _href(base: str, kind: str, query: Mapping[str, str], ids: Sequence[str], page: int) -> str:
    pairs = [(k, v) for k, v in query.items() if k not in ("page", "filter[id][]")]
    pairs += [("filter[id][]", raw) for raw in ids]
    pairs.append(("page", str(page)))
    return f"{base}/api/v4/{kind}?{urlencode(pairs)}"


def _deals_by_owner(data: KommoDataset, company: bool) -> dict[int, list[FakeLead | FakeCustomer]]:
    """Each owner's leads and customers (one pass, not one per record: big benchmark sets)."""
    found: dict[int, list[FakeLead | FakeCustomer]] = {}
    every: list[FakeLead | FakeCustomer] = [*data.leads, *data.customers]
    for deal in every:
        for owner in deal.company_ids if company else deal.contact_ids:
            found.setdefault(owner, []).append(deal)
    return found


def _record_json(
    record: _Record, with_: set[str], deals: dict[int, list[FakeLead | FakeCustomer]]
) -> Json:
    item: Json = {
        "id": record.id,
        "name": record.name,
        "responsible_user_id": record.responsible_user_id,
        "updated_at": updated_at(record),
    }
    if isinstance(record, FakeLead):
        item["status_id"] = ACTIVE_STATUS if record.active else LOST_STATUS
        item["pipeline_id"] = 1
        return item
    if isinstance(record, FakeCustomer):
        return item
    item["created_at"] = record.created_at
    phones = [{"value": phone, "enum_code": "WORK"} for phone in record.phones]
    item["custom_fields_values"] = (
        [{"field_id": 1, "field_name": "Phone", "field_code": "PHONE", "values": phones}]
        if phones
        else None
    )
    mine = deals.get(record.id, [])
    embedded: Json = {"tags": []}
    if "leads" in with_:
        embedded["leads"] = [{"id": d.id} for d in mine if isinstance(d, FakeLead)]
    if "customers" in with_:
        embedded["customers"] = [{"id": d.id} for d in mine if isinstance(d, FakeCustomer)]
    item["_embedded"] = embedded
    return item
