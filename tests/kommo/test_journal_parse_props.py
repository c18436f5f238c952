"""Property tests of kommo/journal_parse.py (issue 13 point 5's sibling in the journal): any
answer Kommo sends to a journal request reads as answers or ids, never as an exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kommo_parse_props import JSON, ODD_SCALARS

from kommo_callerid.core.models import CallDirection, CallStatus, JournalCall, JournalVerdict
from kommo_callerid.kommo.journal_parse import (
    batch_answers,
    body_json,
    created_task_id,
    unsorted_lead_id,
)
from kommo_callerid.kommo.parse import MAX_ID

FAST = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CALLS = [
    JournalCall(f"1.{n}", CallDirection.INBOUND, "+18305803077", 5, CallStatus.ANSWERED, "",
                None, 1_780_000_000, "", "kommo-callerid")
    for n in range(3)
]  # fmt: skip
CALL_FIELDS = st.sampled_from(
    ["request_id", "entity_id", "entity_type", "_embedded", "status", "title", "detail"]
)
ITEM = st.dictionaries(CALL_FIELDS, st.one_of(ODD_SCALARS, JSON), max_size=6)
BATCH = st.fixed_dictionaries(
    {"_embedded": st.fixed_dictionaries({"calls": st.lists(ITEM, max_size=5)})},
    optional={"errors": st.lists(st.one_of(ITEM, JSON), max_size=5)},
)


@FAST
@given(st.one_of(JSON, BATCH))
def test_batch_answers_name_every_call_once(data: Any) -> None:
    answers = batch_answers(data, CALLS)
    assert [answer.uniq for answer in answers] == [call.uniq for call in CALLS]
    for answer in answers:
        assert answer.entity_id is None or 0 < answer.entity_id <= MAX_ID
        assert len(answer.detail) <= 300


@FAST
@given(st.one_of(JSON, st.builds(lambda item: {"_embedded": {"tasks": [item]}}, ITEM)))
def test_created_task_id_is_an_id_or_none(data: Any) -> None:
    task_id = created_task_id(data)
    assert task_id is None or 0 < task_id <= MAX_ID


@FAST
@given(JSON)
def test_unsorted_lead_id_is_an_id_or_none(data: Any) -> None:
    nested = {"_embedded": {"unsorted": [{"_embedded": {"leads": [{"id": data}]}}]}}
    for answer in (data, nested):
        lead_id = unsorted_lead_id(answer)
        assert lead_id is None or 0 < lead_id <= MAX_ID


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_body_json_never_raises(body: bytes | str) -> None:
    body_json(body)


def test_the_shapes_that_raised_before() -> None:
    """An ``_embedded`` list in a call item, an infinite or huge id, a nest too deep."""
    odd = {
        "_embedded": {
            "calls": [
                {"request_id": "0", "_embedded": [], "entity_id": "1" * 5000},
                {"request_id": "1", "entity_id": float("inf")},
                {"request_id": "²", "entity_id": 7},
            ]
        },
        "errors": [{"request_id": "2", "status": "x", "title": ["a"], "detail": {"b": 1}}],
    }
    answers = batch_answers(json.loads(json.dumps(odd)), CALLS)
    assert [a.verdict for a in answers] == [
        JournalVerdict.ATTACHED,
        JournalVerdict.ATTACHED,
        JournalVerdict.REJECTED,
    ]
    assert [a.entity_id for a in answers] == [None, None, None]
    assert body_json("[" * 100_000) is None
