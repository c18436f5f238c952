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


@dataclass(frozen=True, slots=True)
class FakeCustomer:
    id: int
    name: str
    responsible_user_id: int
    contact_ids: tuple[int, ...] = ()
    company_ids: tuple[int, ...] = ()


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
    """Kommo's telephony search: the item ``/api/v2/search/by_phone`` answers, or None."""
    wanted = _digits(phone)[-MATCH_DIGITS:]
    if len(wanted) < MATCH_DIGITS:
        return None
    searches: tuple[tuple[int, Sequence[_PhoneOwner]], ...] = (
        (TYPE_COMPANY, data.companies),
        (TYPE_CONTACT, data.contacts),
    )
    for type_id, owners in searches:
        matches = [o for o in owners if any(_digits(p).endswith(wanted) for p in o.phones)]
        if matches:
            oldest = min(matches, key=lambda owner: (owner.created_at, owner.id))
            return _by_phone_item(data, type_id, oldest)
    return None


def _by_phone_item(data: KommoDataset, type_id: int, owner: _PhoneOwner) -> Json:
    def linked(record: FakeLead | FakeCustomer) -> bool:
        ids = record.company_ids if type_id == TYPE_COMPANY else record.contact_ids
        return owner.id in ids

    leads = [lead for lead in data.leads if lead.active and linked(lead)]
    customers = [customer for customer in data.customers if linked(customer)]
    owner_item = _item(type_id, owner.id, owner.name, owner.responsible_user_id)
    deal: FakeLead | FakeCustomer | None = None
    deal_type = TYPE_LEAD
    if len(leads) == 1 and not customers:
        deal = leads[0]
    elif len(customers) == 1 and not leads:
        deal, deal_type = customers[0], TYPE_CUSTOMER
    if deal is None:
        return owner_item
    return {
        **_item(deal_type, deal.id, deal.name, deal.responsible_user_id),
        "phone_entity": owner_item,
    }


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
