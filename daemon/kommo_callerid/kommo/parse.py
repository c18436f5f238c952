"""Reading Kommo's answers: raw JSON in, :mod:`kommo_callerid.models` types out.

Pure functions, no I/O. A parser raises :class:`BadShape` when the JSON is not what Kommo
documents, and only that, whatever the JSON (property-tested); the client turns it into a
logged :class:`~kommo_callerid.models.KommoError`. JSON is read with :func:`loads_json`, which
also turns nesting deep enough to exhaust the stack into a plain ``ValueError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kommo_callerid.core.models import AccountInfo, Entity, EntityType

#: The longest error detail taken from an answer or an exception.
DETAIL_CHARS = 200
#: Kommo's ids are 64-bit; a longer digit string is not an id (and int() of thousands of
#: digits is refused by Python anyway).
MAX_ID = 2**63 - 1
_MAX_ID_DIGITS = len(str(MAX_ID))

_TYPE_CODES = {
    1: EntityType.CONTACT,
    2: EntityType.LEAD,
    3: EntityType.COMPANY,
    12: EntityType.CUSTOMER,
}
_TYPE_NAMES = {kind.value: kind for kind in EntityType} | {
    "contacts": EntityType.CONTACT,
    "leads": EntityType.LEAD,
    "companies": EntityType.COMPANY,
    "customers": EntityType.CUSTOMER,
}
_PHONE_OWNERS = (EntityType.CONTACT, EntityType.COMPANY)


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer from Kommo, read in full."""

    path: str
    status: int
    content_type: str
    body: bytes
    #: The Retry-After header, in seconds, when there was one.
    retry_after: float | None = None
    #: How many attempts it took to get this answer.
    attempts: int = 1
    #: The body was larger than the transport reads; ``body`` is empty then.
    oversized: bool = False


class BadShape(ValueError):
    """The JSON parsed but is not what Kommo documents."""


def loads_json(body: bytes | str) -> Any:
    """``json.loads``, with any way of failing (deep nesting included) a ``ValueError``."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def error_detail(response: Response) -> str:
    """problem+json's detail or title when present, else a word on what came back."""
    try:
        data = loads_json(response.body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "title"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])[:DETAIL_CHARS]
    return f"HTTP {response.status} ({response.content_type or 'no content type'})"


def parse_by_phone(data: Any) -> tuple[Entity | None, Entity | None]:
    items = _embedded_list(data, "items")
    if not items:
        return None, None
    item = items[0]
    if not isinstance(item, dict):
        raise BadShape("an item is not an object")
    entity = _parse_entity(item, _parse_type(item.get("type")))
    if entity.type in _PHONE_OWNERS:
        return entity, None
    return entity, _parse_phone_entity(item.get("phone_entity"))


def parse_contacts(data: Any) -> tuple[Entity | None, Entity | None]:
    contacts = [item for item in _embedded_list(data, "contacts") if isinstance(item, dict)]
    if not contacts:
        return None, None
    # by_phone picks the oldest record when several share a number; do the same here.
    oldest = min(contacts, key=_age)
    return _parse_entity(oldest, EntityType.CONTACT), None


def _age(item: dict[str, Any]) -> tuple[float, float]:
    created_at = _positive_int(item.get("created_at"))
    id_ = _positive_int(item.get("id"))
    return (created_at or math.inf, id_ or math.inf)


def _parse_phone_entity(raw: Any) -> Entity | None:
    # Lenient on purpose: a lead without its contact still names the responsible user.
    if not isinstance(raw, dict):
        return None
    try:
        entity = _parse_entity(raw, _parse_type(raw.get("type")))
    except BadShape:
        return None
    return entity if entity.type in _PHONE_OWNERS else None


def _embedded_list(data: Any, key: str) -> list[Any]:
    embedded = data.get("_embedded") if isinstance(data, dict) else None
    found = embedded.get(key) if isinstance(embedded, dict) else None
    if not isinstance(found, list):
        raise BadShape(f"no _embedded.{key} list")
    return found


def _parse_type(raw: Any) -> EntityType:
    if isinstance(raw, str):
        digits = _ascii_int(raw)
        raw = digits if digits is not None else raw.strip().lower()
    found = _TYPE_NAMES.get(raw) if isinstance(raw, str) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        found = _TYPE_CODES.get(raw)
    if found is None:
        raise BadShape(f"unknown entity type {str(raw)[:40]!r}")
    return found


def _parse_entity(item: dict[str, Any], kind: EntityType) -> Entity:
    id_ = _positive_int(item.get("id"))
    if id_ is None:
        raise BadShape(f"a {kind.value} without a valid id")
    name = item.get("name")
    name = name.strip() if isinstance(name, str) else ""
    return Entity(
        type=kind,
        id=id_,
        name=name or f"{kind.value.title()} #{id_}",
        responsible_user_id=_positive_int(item.get("responsible_user_id")),
    )


def _positive_int(raw: Any) -> int | None:
    if isinstance(raw, str):
        raw = _ascii_int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw <= MAX_ID:
        return raw
    return None


def _ascii_int(text: str) -> int | None:
    """``"42"`` -> 42; None for anything else (``"²"`` and ``"٣"`` are digits to str.isdigit)."""
    text = text.strip()
    if 0 < len(text) <= _MAX_ID_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_account(data: Any) -> AccountInfo:
    """GET /api/v4/account: the account's id, name and subdomain."""
    if not isinstance(data, dict):
        raise BadShape("the account is not an object")
    account_id = data.get("id")
    if not isinstance(account_id, int) or isinstance(account_id, bool) or account_id > MAX_ID:
        raise BadShape("the account has no numeric id")
    name, subdomain = data.get("name"), data.get("subdomain")
    return AccountInfo(
        id=account_id,
        name=name if isinstance(name, str) else "",
        subdomain=subdomain if isinstance(subdomain, str) else "",
    )
