"""What Kommo answers to the call journal's requests, read without ever raising.

Pure: raw JSON in, :class:`JournalAnswer` values and ids out. Whatever comes back (HTML, a
deep nest, ``"²"`` or a 5,000-digit string for an id, a list where an object belongs) reads
as "nothing usable" here, never as an exception: the sender would otherwise retry the same
batch against the same answer for ever, and every record behind it would wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kommo_callerid.core.models import EntityType, JournalAnswer, JournalCall, JournalVerdict
from kommo_callerid.kommo.parse import MAX_ID, loads_json

_ENTITY_TYPES = {
    "contact": EntityType.CONTACT,
    "contacts": EntityType.CONTACT,
    "lead": EntityType.LEAD,
    "leads": EntityType.LEAD,
    "company": EntityType.COMPANY,
    "companies": EntityType.COMPANY,
    "customer": EntityType.CUSTOMER,
    "customers": EntityType.CUSTOMER,
}
_MAX_DIGITS = len(str(MAX_ID))


def body_json(body: bytes | str) -> Any:
    """The answer's JSON, or None when it is empty or no JSON at all."""
    try:
        return loads_json(body) if body.strip() else None
    except ValueError:
        return None


def batch_answers(data: Any, calls: Sequence[JournalCall]) -> list[JournalAnswer]:
    """Match ``_embedded.calls`` and ``errors`` to the calls by ``request_id``; a call the
    answer does not mention is retried."""
    answers: dict[int, JournalAnswer] = {}
    for item in embedded(data, "calls"):
        index = whole_number(item.get("request_id"))
        if index is None or not 0 <= index < len(calls):
            continue
        inner = item.get("_embedded")
        entity = inner.get("entity") if isinstance(inner, dict) else None
        answers[index] = JournalAnswer(
            calls[index].uniq,
            JournalVerdict.ATTACHED,
            _ENTITY_TYPES.get(str(item.get("entity_type"))),
            positive_id(item.get("entity_id")),
            positive_id(entity.get("responsible_user_id")) if isinstance(entity, dict) else None,
        )
    errors = data.get("errors") if isinstance(data, dict) else None
    for error in errors if isinstance(errors, list) else []:
        index = whole_number(error.get("request_id")) if isinstance(error, dict) else None
        if index is None or not 0 <= index < len(calls) or index in answers:
            continue
        answers[index] = error_item(error, calls[index].uniq)
    missing = JournalVerdict.RETRY
    return [
        answers.get(i, JournalAnswer(call.uniq, missing, detail="not in Kommo's answer"))
        for i, call in enumerate(calls)
    ]


def error_item(error: dict[str, Any], uniq: str) -> JournalAnswer:
    status = whole_number(error.get("status"))
    words = " ".join(_text(error.get(key)) for key in ("title", "detail")).strip()
    not_found = status in (204, 404) or "not found" in words.lower()
    verdict = JournalVerdict.UNKNOWN if not_found else JournalVerdict.REJECTED
    return JournalAnswer(uniq, verdict, detail=words[:300] or "refused", status=status)


def unsorted_lead_id(data: Any) -> int | None:
    """``POST /leads/unsorted/sip``: the id of the lead it made, or None."""
    unsorted = first(embedded(data, "unsorted"))
    return positive_id(first(embedded(unsorted, "leads")).get("id"))


def created_task_id(data: Any) -> int | None:
    """``POST /tasks``: the id of the task it made, or None."""
    return positive_id(first(embedded(data, "tasks")).get("id"))


def embedded(data: Any, key: str) -> list[dict[str, Any]]:
    inner = data.get("_embedded") if isinstance(data, dict) else None
    items = inner.get(key) if isinstance(inner, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def first(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if items else {}


def whole_number(value: Any) -> int | None:
    """0 <= n <= MAX_ID from an int or ASCII digits (``"²"`` and ``"٣"`` are not)."""
    if isinstance(value, str):
        text = value.strip()
        ascii_digits = text.isascii() and text.isdigit()
        value = int(text) if ascii_digits and len(text) <= _MAX_DIGITS else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return None


def positive_id(value: Any) -> int | None:
    number = whole_number(value)
    return number if number else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
