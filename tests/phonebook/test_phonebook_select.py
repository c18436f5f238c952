"""The mirror answers as Kommo's by_phone does (the fake's, which follows the contract's
rule): random datasets go through the list endpoints' JSON, the real page parser and the
SQLite mirror, and every number's answer must equal by_phone's read by the real parser: same
entity, same type, same phone_entity."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kommo_callerid.core.models import Entity, EntityType
from kommo_callerid.core.phonebook_models import BookKind
from kommo_callerid.kommo.parse import parse_by_phone
from kommo_callerid.kommo.phonebook_parse import parse_page
from kommo_callerid.phonebook.select import Candidate, choose
from kommo_callerid.phonebook.store import Mirror
from kommo_callerid.sim.kommo_data import (
    FakeCompany,
    FakeContact,
    FakeCustomer,
    FakeLead,
    KommoDataset,
    search_by_phone,
)
from kommo_callerid.sim.kommo_lists import list_page

#: Few suffixes, several prefixes: numbers collide on their last 7 digits all the time.
SUFFIXES = ("5550199", "5803077", "0000001", "9460958")
PREFIXES = ("", "1", "+1 830 ", "44 20 ", "8 (495) ")
PHONES = st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES), st.sampled_from(SUFFIXES))
NAMES = st.sampled_from(["", "  ", "Acme", "John Doe", " Wei "])
USERS = st.integers(1, 3)
TIMES = st.integers(1_700_000_000, 1_700_000_003)  # ties on created_at too


def _owners(cls: Any, ids: range) -> st.SearchStrategy[tuple[Any, ...]]:
    one = st.builds(
        lambda id_, name, phones, user, created: cls(id_, name, tuple(phones), user, created),
        st.sampled_from(list(ids)),
        NAMES,
        st.lists(PHONES | st.just("123"), max_size=3),
        USERS,
        TIMES,
    )
    return st.lists(one, max_size=5, unique_by=lambda o: o.id).map(tuple)


def _links() -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(1, 6), max_size=3, unique=True).map(tuple)


LEADS = st.lists(
    st.builds(
        lambda id_, name, user, active, contacts, companies: FakeLead(
            id_, name, user, active, contacts, tuple(c + 100 for c in companies)
        ),
        st.integers(1000, 1010),
        NAMES,
        USERS,
        st.booleans(),
        _links(),
        _links(),
    ),
    max_size=6,
    unique_by=lambda lead: lead.id,
).map(tuple)
CUSTOMERS = st.lists(
    st.builds(
        lambda id_, name, user, contacts, companies: FakeCustomer(
            id_, name, user, contacts, tuple(c + 100 for c in companies)
        ),
        st.integers(2000, 2005),
        NAMES,
        USERS,
        _links(),
        _links(),
    ),
    max_size=4,
    unique_by=lambda customer: customer.id,
).map(tuple)
DATASETS = st.builds(
    KommoDataset,
    contacts=_owners(FakeContact, range(1, 7)),
    companies=_owners(FakeCompany, range(101, 107)),
    leads=LEADS,
    customers=CUSTOMERS,
)


def mirror_of(data: KommoDataset, folder: Path) -> Mirror:
    mirror = Mirror.open(folder / "phonebook.sqlite3")
    for kind in (BookKind.LEADS, BookKind.CUSTOMERS, BookKind.CONTACTS, BookKind.COMPANIES):
        page: int | None = 1
        while page is not None:
            query = {"limit": "2", "page": str(page), "order[updated_at]": "asc"}
            if kind.owns_phones:
                query["with"] = "leads,customers"
            body = list_page(data, kind.value, query, (), "http://kommo.test")
            got = parse_page(kind, body, page)
            mirror.apply(kind, got.records, 1)
            page = got.next_page
    return mirror


def by_phone(data: KommoDataset, number: str) -> tuple[Entity | None, Entity | None]:
    item = search_by_phone(data, number)
    return parse_by_phone({"_embedded": {"items": [item] if item else []}})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DATASETS, st.sampled_from(PREFIXES))
def test_the_mirror_answers_every_number_as_by_phone_does(data: KommoDataset, prefix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        mirror = mirror_of(data, Path(folder))
        try:
            for number in [prefix + suffix for suffix in SUFFIXES] + ["5551234", "12"]:
                found = mirror.find("".join(c for c in number if c.isdigit()))
                assert (found or (None, None)) == by_phone(data, number), number
        finally:
            mirror.close()


def test_every_branch_of_the_rule() -> None:
    """The branches the seed describes, one by one (the property above mixes them)."""
    contact = Entity(EntityType.CONTACT, 1, "A", 7)
    older = Entity(EntityType.CONTACT, 2, "B", 8)
    lead = Entity(EntityType.LEAD, 10, "L", 9)
    lead2 = Entity(EntityType.LEAD, 11, "L2", 9)
    customer = Entity(EntityType.CUSTOMER, 20, "C", 6)
    assert choose([]) is None
    # one owner, one active lead: the lead, with the owner as phone_entity
    assert choose([Candidate(contact, 5, (lead,))]) == (lead, contact)
    # one customer and no active lead: the customer
    assert choose([Candidate(contact, 5, (), (customer,))]) == (customer, contact)
    # a lead and a customer, or two leads: the owner itself
    assert choose([Candidate(contact, 5, (lead,), (customer,))]) == (contact, None)
    assert choose([Candidate(contact, 5, (lead, lead2))]) == (contact, None)
    # two owners, only the younger has one deal: that deal
    assert choose([Candidate(older, 1), Candidate(contact, 5, (lead,))]) == (lead, contact)
    # two owners with a deal each: the oldest owner, not its deal
    both = [Candidate(older, 1, (lead2,)), Candidate(contact, 5, (lead,))]
    assert choose(both) == (older, None)
    # same created_at: the lower id
    assert choose([Candidate(older, 5), Candidate(contact, 5)]) == (contact, None)
