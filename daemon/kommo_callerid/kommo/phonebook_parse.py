"""Reading Kommo's list pages (``GET /api/v4/{contacts,companies,leads,customers}``) into the
phone book's typed records. Pure functions; whatever the JSON, only :class:`BadShape` escapes
(property-tested), and a record that cannot be read is skipped, not the page."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from kommo_callerid.core.models import EntityType
from kommo_callerid.core.phonebook_models import LOST, WON, BookKind, BookPage, Deal, PhoneOwner
from kommo_callerid.kommo.parse import BadShape, _positive_int

#: A phone with more digits than this is not a phone number (and not worth an index entry).
MAX_PHONE_DIGITS = 32
#: What one record may carry at most: more is not a phone book, it is a hostile answer.
MAX_PHONES = 50
MAX_LINKS = 10_000
_ENTITY = {
    BookKind.CONTACTS: EntityType.CONTACT,
    BookKind.COMPANIES: EntityType.COMPANY,
    BookKind.LEADS: EntityType.LEAD,
    BookKind.CUSTOMERS: EntityType.CUSTOMER,
}


def entity_name(raw: Any, kind: BookKind, id_: int) -> str:
    """The name as :func:`kommo.parse._parse_entity` reads it from a by_phone answer."""
    name = raw.strip() if isinstance(raw, str) else ""
    return name or f"{_ENTITY[kind].value.title()} #{id_}"


def parse_page(kind: BookKind, data: Any, page: int) -> BookPage:
    """One list page; ``data`` None (204) is an empty last page."""
    if data is None:
        return BookPage(kind, (), None)
    if not isinstance(data, dict):
        raise BadShape("the page is not an object")
    embedded = data.get("_embedded")
    items = embedded.get(kind.value) if isinstance(embedded, dict) else None
    if not isinstance(items, list):
        raise BadShape(f"no _embedded.{kind.value} list")
    records: list[PhoneOwner | Deal] = []
    for item in items:
        record = _record(kind, item) if isinstance(item, dict) else None
        if record is not None:
            records.append(record)
    return BookPage(kind, tuple(records), _next_page(data.get("_links"), page) if items else None)


def _next_page(links: Any, page: int) -> int | None:
    nxt = links.get("next") if isinstance(links, dict) else None
    href = nxt.get("href") if isinstance(nxt, dict) else None
    if not isinstance(href, str):
        return None
    # Only the page number is taken from the link: the token never follows a URL Kommo gives.
    found = parse_qs(urlsplit(href).query).get("page", [])
    number = _positive_int(found[0]) if found else None
    return number if number is not None and number > page else page + 1


def _record(kind: BookKind, item: dict[str, Any]) -> PhoneOwner | Deal | None:
    id_ = _positive_int(item.get("id"))
    if id_ is None:
        return None
    name = entity_name(item.get("name"), kind, id_)
    responsible = _positive_int(item.get("responsible_user_id"))
    updated_at = _time(item.get("updated_at"))
    if kind is BookKind.LEADS:
        status = _positive_int(item.get("status_id"))
        return Deal(kind, id_, name, responsible, updated_at, status not in (WON, LOST))
    if kind is BookKind.CUSTOMERS:
        return Deal(kind, id_, name, responsible, updated_at)
    embedded = item.get("_embedded")
    embedded = embedded if isinstance(embedded, dict) else {}
    return PhoneOwner(
        kind,
        id_,
        name,
        responsible,
        _time(item.get("created_at")),
        updated_at,
        _phones(item.get("custom_fields_values")),
        _ids(embedded.get("leads")),
        _ids(embedded.get("customers")),
    )


def _time(raw: Any) -> int:
    return _positive_int(raw) or 0


def _phones(fields: Any) -> tuple[str, ...]:
    if not isinstance(fields, list):
        return ()
    phones: list[str] = []
    for field in fields:
        if not isinstance(field, dict) or field.get("field_code") != "PHONE":
            continue
        values = field.get("values")
        for value in values if isinstance(values, list) else ():
            text = value.get("value") if isinstance(value, dict) else None
            if isinstance(text, str | int) and not isinstance(text, bool):
                digits = "".join(c for c in str(text) if c.isascii() and c.isdigit())
                if digits and len(digits) <= MAX_PHONE_DIGITS and digits not in phones:
                    phones.append(digits)
    return tuple(phones[:MAX_PHONES])


def _ids(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        return ()
    found = (_positive_int(item.get("id")) for item in raw[:MAX_LINKS] if isinstance(item, dict))
    return tuple(dict.fromkeys(id_ for id_ in found if id_ is not None))
