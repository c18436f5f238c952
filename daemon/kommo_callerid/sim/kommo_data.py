"""The fake Kommo's records and its searches: what the fake server answers from.

Pure data and pure functions, no HTTP: :mod:`kommo_callerid.sim.kommo_app` serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

TYPE_CONTACT, TYPE_LEAD, TYPE_COMPANY, TYPE_CUSTOMER = 1, 2, 3, 12
#: Kommo's telephony search matches on this many trailing digits.
MATCH_DIGITS = 7


@dataclass(frozen=True, slots=True)
class _PhoneOwner:
    id: int
    name: str
    phones: tuple[str, ...]
    responsible_user_id: int
    #: Unix time; when several records share a number the oldest one wins.
    created_at: int
    #: Unix time of the last change (the list endpoints' filter and order); 0: ``created_at``.
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class FakeContact(_PhoneOwner):
    pass


@dataclass(frozen=True, slots=True)
class FakeCompany(_PhoneOwner):
    pass


@dataclass(frozen=True, slots=True)
class FakeLead:
    id: int
    name: str
    responsible_user_id: int
    active: bool = True
    contact_ids: tuple[int, ...] = ()
    company_ids: tuple[int, ...] = ()
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class FakeCustomer:
    id: int
    name: str
    responsible_user_id: int
    contact_ids: tuple[int, ...] = ()
    company_ids: tuple[int, ...] = ()
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class KommoDataset:
    contacts: tuple[FakeContact, ...] = ()
    companies: tuple[FakeCompany, ...] = ()
    leads: tuple[FakeLead, ...] = ()
    customers: tuple[FakeCustomer, ...] = ()


def demo_dataset() -> KommoDataset:
    """A few realistic records; John Doe's number is the caller in the recorded AMI traffic."""
    day = 86_400
    base = 1_700_000_000
    return KommoDataset(
        contacts=(
            FakeContact(1001, "John Doe", ("+1 830 580 3077",), 8375357, base),
            FakeContact(1002, "Maria Garcia", ("+1 415 555 0199",), 8320148, base + day),
            FakeContact(1003, "Wei Chen", ("+44 20 7946 0958",), 8375357, base + 2 * day),
            FakeContact(1004, "Olga Petrova", ("+7 495 123-45-67",), 8320148, base + 3 * day),
            FakeContact(1005, "Sam Patel", ("+1 646 555 0123",), 8375357, base + 4 * day),
        ),
        companies=(FakeCompany(2001, "Acme Logistics", ("+1 212 555 0142",), 8320148, base),),
        leads=(
            FakeLead(3001, "Fleet renewal 2025", 8320148, contact_ids=(1002,)),
            FakeLead(3002, "Old quote", 8375357, active=False, contact_ids=(1002,)),
            FakeLead(3003, "Moscow office fit-out", 8320148, contact_ids=(1004,)),
            FakeLead(3004, "Warehouse lease", 8375357, contact_ids=(1004,)),
            FakeLead(3005, "", 8375357, contact_ids=(1005,)),
        ),
        customers=(FakeCustomer(4001, "Wei Chen - annual support", 8375357, contact_ids=(1003,)),),
    )


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _item(type_id: int, id_: int, name: str, responsible_user_id: int) -> Json:
    return {"id": id_, "name": name, "responsible_user_id": responsible_user_id, "type": type_id}


def search_by_phone(data: KommoDataset, phone: str) -> Json | None:
    """Kommo's telephony search: the item ``/api/v2/search/by_phone`` answers, or None.

    The last 7 digits; companies first, else contacts. When exactly one of the records with
    the number has one deal (exactly one active lead and no customer, or exactly one customer
    and no active lead), that deal, with the record as ``phone_entity``; otherwise the oldest
    record (``created_at``, then id)."""
    wanted = _digits(phone)[-MATCH_DIGITS:]
    if len(wanted) < MATCH_DIGITS:
        return None
    searches: tuple[tuple[int, Sequence[_PhoneOwner]], ...] = (
        (TYPE_COMPANY, data.companies),
        (TYPE_CONTACT, data.contacts),
    )
    for type_id, owners in searches:
        matches = [o for o in owners if any(_digits(p).endswith(wanted) for p in o.phones)]
        if not matches:
            continue
        with_deal = [
            (owner, found)
            for owner in matches
            if (found := _one_deal(data, type_id, owner)) is not None
        ]
        if len(with_deal) == 1:
            owner, (deal_type, deal) = with_deal[0]
            return {
                **_item(deal_type, deal.id, deal.name, deal.responsible_user_id),
                "phone_entity": _item(type_id, owner.id, owner.name, owner.responsible_user_id),
            }
        oldest = min(matches, key=lambda owner: (owner.created_at, owner.id))
        return _item(type_id, oldest.id, oldest.name, oldest.responsible_user_id)
    return None


def _one_deal(
    data: KommoDataset, type_id: int, owner: _PhoneOwner
) -> tuple[int, FakeLead | FakeCustomer] | None:
    """The owner's one active lead (and no customer) or one customer (and no active lead)."""

    def linked(record: FakeLead | FakeCustomer) -> bool:
        ids = record.company_ids if type_id == TYPE_COMPANY else record.contact_ids
        return owner.id in ids

    leads = [lead for lead in data.leads if lead.active and linked(lead)]
    customers = [customer for customer in data.customers if linked(customer)]
    if len(leads) == 1 and not customers:
        return TYPE_LEAD, leads[0]
    if len(customers) == 1 and not leads:
        return TYPE_CUSTOMER, customers[0]
    return None


def search_contacts(data: KommoDataset, query: str) -> list[Json]:
    """The v4 contacts search: contacts with the query's digits anywhere in a phone."""
    wanted = _digits(query)
    if not wanted:
        return []
    return [
        {
            "id": contact.id,
            "name": contact.name,
            "responsible_user_id": contact.responsible_user_id,
            "created_at": contact.created_at,
        }
        for contact in data.contacts
        if any(wanted in _digits(phone) for phone in contact.phones)
    ]
