"""Property tests of kommo/parse.py: whatever JSON Kommo (or anything else) sends, a parser
returns typed results or raises BadShape, and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kommo_callerid.kommo.parse import (
    MAX_ID,
    BadShape,
    Response,
    error_detail,
    loads_json,
    parse_account,
    parse_by_phone,
    parse_contacts,
)

#: Values Kommo's fields might hold on a bad day: odd digits, huge numbers, wrong types.
ODD_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["²", "٣", "\uff11\uff12", " 7 ", "-1", "0", "1" * 5000, "lead", "12"]),
)
JSON = st.recursive(
    ODD_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["id", "type", "name", "responsible_user_id", "created_at", "phone_entity"]
)
ITEM = st.dictionaries(FIELD_NAMES, st.one_of(ODD_SCALARS, JSON), max_size=6)


def _answer(key: str) -> Any:
    return st.fixed_dictionaries({"_embedded": st.fixed_dictionaries({key: st.lists(ITEM)})})


FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FAST
@given(st.one_of(JSON, _answer("items")))
def test_by_phone_raises_only_bad_shape(data: Any) -> None:
    try:
        entity, phone_entity = parse_by_phone(data)
    except BadShape:
        return
    for found in (entity, phone_entity):
        if found is not None:
            assert 0 < found.id <= MAX_ID and found.name


@FAST
@given(st.one_of(JSON, _answer("contacts")))
def test_contacts_raises_only_bad_shape(data: Any) -> None:
    try:
        entity, _ = parse_contacts(data)
    except BadShape:
        return
    assert entity is None or 0 < entity.id <= MAX_ID


@FAST
@given(JSON)
def test_account_raises_only_bad_shape(data: Any) -> None:
    try:
        account = parse_account(data)
    except BadShape:
        return
    assert isinstance(account.id, int)


@FAST
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_error_detail_always_answers(body: bytes) -> None:
    detail = error_detail(Response("/x", 500, "application/json", body))
    assert isinstance(detail, str) and len(detail) <= 200


@pytest.mark.parametrize(
    "item",
    [
        {"id": "²", "type": "contact"},
        {"id": 5, "type": "²"},
        {"id": "1" * 5000, "type": 1},
        {"id": 10**30, "type": 1},
        {"id": 5, "type": "9" * 5000},
    ],
)
def test_the_trial_s_odd_ids_and_types_are_bad_shapes(item: dict[str, Any]) -> None:
    with pytest.raises(BadShape):
        parse_by_phone({"_embedded": {"items": [item]}})


def test_deeply_nested_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_json("[" * 100_000 + "]" * 100_000)
