"""The fake Kommo's call journal endpoints: ``POST /api/v4/calls``, ``/api/v4/leads/unsorted/sip``
and ``/api/v4/tasks``, mounted by :mod:`kommo_callerid.sim.kommo_app`.

``/api/v4/calls`` follows Kommo's documented attach rule: the contact or company whose phone
ends with the call's last 10 digits; its one active lead when it has no customer → the lead;
its one customer when it has no active lead → the customer; else the contact or company. A
number nobody has comes back as an item of ``errors``. Everything accepted is recorded, with
switches for the tests: refuse some numbers, answer a batch with one bad item by a 400 for
the whole batch, or be down (503) for the journal only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kommo_callerid.sim.kommo_data import (
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
)

_PhoneOwner = FakeContact | FakeCompany

CALLS_PATH = "/api/v4/calls"
UNSORTED_SIP_PATH = "/api/v4/leads/unsorted/sip"
TASKS_PATH = "/api/v4/tasks"
#: Kommo attaches a call by this many trailing digits.
ATTACH_DIGITS = 10
MAX_BATCH = 50
_REQUIRED = ("direction", "duration", "source", "phone")


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


@dataclass(frozen=True, slots=True)
class AcceptedCall:
    """One call Kommo took: what was sent, and where it went."""

    body: dict[str, Any]
    entity_type: str
    entity_id: int
    responsible_user_id: int
    #: The request's place among all requests the fake answered (1-based).
    order: int

    @property
    def uniq(self) -> str:
        return str(self.body.get("uniq", ""))


@dataclass
class FakeJournal:
    dataset: KommoDataset
    calls: list[AcceptedCall] = field(default_factory=list)
    unsorted: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: Numbers (digits, matched on the tail) Kommo refuses with a validation error.
    reject_numbers: set[str] = field(default_factory=set)
    #: Refuse a whole batch with a 400 when one of its calls cannot be attached.
    batch_400: bool = False
    #: The journal endpoints answer 503 (the notifications keep working).
    down: bool = False
    #: How many POST /api/v4/calls requests arrived, and the batch sizes.
    batches: list[int] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(90_001))

    def uniqs(self) -> list[str]:
        return [call.uniq for call in self.calls]

    async def add_calls(self, request: web.Request, arrival: Any) -> web.Response:
        if self.down:
            return _problem(503, "Service Unavailable", "the journal is down")
        items = await _json_list(request)
        if isinstance(items, str):
            return _problem(400, "Bad Request", items)
        self.batches.append(len(items))
        verdicts = [self._attach(item) for item in items]
        if self.batch_400 and len(items) > 1 and any(isinstance(v, dict) for v in verdicts):
            return _problem(400, "Bad Request", "one of the calls cannot be added")
        order = getattr(arrival, "order", 0)
        accepted, errors = [], []
        for index, (item, verdict) in enumerate(zip(items, verdicts, strict=True)):
            request_id = str(item.get("request_id", index))
            if isinstance(verdict, dict):
                errors.append({"request_id": request_id, **verdict})
                continue
            entity_type, entity_id, responsible = verdict
            self.calls.append(AcceptedCall(item, entity_type, entity_id, responsible, order))
            accepted.append(_call_answer(next(self._ids), request_id, verdict))
        body = {"_total_items": len(accepted), "_embedded": {"calls": accepted}, "errors": errors}
        return web.json_response(body)

    async def add_unsorted(self, request: web.Request, arrival: Any) -> web.Response:
        if self.down:
            return _problem(503, "Service Unavailable", "the journal is down")
        items = await _json_list(request)
        if isinstance(items, str):
            return _problem(400, "Bad Request", items)
        answers = []
        for item in items:
            metadata = item.get("metadata")
            if not isinstance(metadata, dict) or not metadata.get("phone"):
                return _problem(400, "Bad Request", "metadata.phone is required")
            self.unsorted.append(item)
            lead_id = next(self._ids)
            answers.append(
                {
                    "uid": f"fake-{lead_id}",
                    "_embedded": {"leads": [{"id": lead_id}], "contacts": [{"id": lead_id + 1}]},
                }
            )
        return web.json_response({"_embedded": {"unsorted": answers}})

    async def add_tasks(self, request: web.Request, arrival: Any) -> web.Response:
        if self.down:
            return _problem(503, "Service Unavailable", "the journal is down")
        items = await _json_list(request)
        if isinstance(items, str):
            return _problem(400, "Bad Request", items)
        answers = []
        for item in items:
            if item.get("task_type_id") != 1 or "entity_id" not in item:
                return _problem(400, "Bad Request", "task_type_id and entity_id are required")
            self.tasks.append(item)
            answers.append({"id": next(self._ids), "request_id": item.get("request_id")})
        return web.json_response({"_embedded": {"tasks": answers}})

    def _attach(self, item: dict[str, Any]) -> tuple[str, int, int] | dict[str, Any]:
        """(entity type, id, responsible user) or an error item."""
        missing = [key for key in _REQUIRED if key not in item]
        if missing:
            return {"status": 400, "title": "Bad Request", "detail": f"missing {missing}"}
        wanted = _digits(str(item["phone"]))[-ATTACH_DIGITS:]
        if any(wanted.endswith(_digits(number)[-ATTACH_DIGITS:]) for number in self.reject_numbers):
            return {"status": 400, "title": "Bad Request", "detail": "call refused by the fake"}
        return attach(self.dataset, wanted) or {
            "status": 404,
            "title": "Not Found",
            "detail": "Entity not found for this phone",
        }


def attach(data: KommoDataset, digits: str) -> tuple[str, int, int] | None:
    """Kommo's rule: where a call from ``digits`` (last 10) goes, or None."""
    if len(digits) < 7:
        return None
    owners: Sequence[tuple[str, Sequence[_PhoneOwner]]] = (
        ("contact", data.contacts),
        ("company", data.companies),
    )
    for kind, records in owners:
        for owner in sorted(records, key=lambda o: (o.created_at, o.id)):
            if any(_digits(phone)[-ATTACH_DIGITS:] == digits for phone in owner.phones):
                return _deal_or_owner(data, kind, owner)
    return None


def _deal_or_owner(data: KommoDataset, kind: str, owner: _PhoneOwner) -> tuple[str, int, int]:
    def linked(record: FakeLead | FakeCustomer) -> bool:
        return owner.id in (record.contact_ids if kind == "contact" else record.company_ids)

    leads = [lead for lead in data.leads if lead.active and linked(lead)]
    customers = [customer for customer in data.customers if linked(customer)]
    if len(leads) == 1 and not customers:
        return "lead", leads[0].id, leads[0].responsible_user_id
    if len(customers) == 1 and not leads:
        return "customer", customers[0].id, customers[0].responsible_user_id
    return kind, owner.id, owner.responsible_user_id


def _call_answer(call_id: int, request_id: str, verdict: tuple[str, int, int]) -> dict[str, Any]:
    entity_type, entity_id, responsible = verdict
    return {
        "id": call_id,
        "entity_id": entity_id,
        "entity_type": entity_type,
        "request_id": request_id,
        "_embedded": {"entity": {"id": entity_id, "responsible_user_id": responsible}},
    }


async def _json_list(request: web.Request) -> list[dict[str, Any]] | str:
    try:
        payload = await request.json()
    except ValueError:
        return "body is not valid JSON"
    if not isinstance(payload, list) or not payload:
        return "body must be a non-empty array"
    if len(payload) > MAX_BATCH:
        return f"at most {MAX_BATCH} items per request"
    if not all(isinstance(item, dict) for item in payload):
        return "each item must be an object"
    return payload


def _problem(status: int, title: str, detail: str) -> web.Response:
    body = {"title": title, "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")
