"""Typed records of Kommo's phone book: what ``kommo/`` reads from the list endpoints and the
``phonebook/`` mirror stores (raw Kommo JSON never leaves ``kommo/``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Lead statuses that close a lead: won and lost. Every other status is active.
WON, LOST = 142, 143


class BookKind(StrEnum):
    """The four lists the mirror keeps (the value is Kommo's endpoint name)."""

    CONTACTS = "contacts"
    COMPANIES = "companies"
    LEADS = "leads"
    CUSTOMERS = "customers"

    @property
    def owns_phones(self) -> bool:
        return self in (BookKind.CONTACTS, BookKind.COMPANIES)


@dataclass(frozen=True, slots=True)
class PhoneOwner:
    """A contact or a company: who a number belongs to."""

    kind: BookKind
    id: int
    name: str
    responsible_user_id: int | None
    #: Unix time; when several owners share a number the oldest one wins.
    created_at: int
    updated_at: int
    #: Every phone number's digits (nothing else), as typed in Kommo.
    phones: tuple[str, ...]
    lead_ids: tuple[int, ...] = ()
    customer_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Deal:
    """A lead or a customer linked to phone owners."""

    kind: BookKind
    id: int
    name: str
    responsible_user_id: int | None
    updated_at: int
    #: Leads: not won (142) or lost (143). Customers: always.
    active: bool = True


@dataclass(frozen=True, slots=True)
class BookPage:
    """One page of a list endpoint; ``next_page`` the page to ask for next (None: the last)."""

    kind: BookKind
    records: tuple[PhoneOwner | Deal, ...]
    next_page: int | None


class ListUnavailable(Exception):
    """The account does not offer this list (customers switched off): skip it, do not retry."""
