"""The number a click dials: hostile input never reaches AMI as anything but 3-20 digits."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kommo_callerid.clicktocall.numbers import NotDialable, compile_rules, dialable
from kommo_callerid.clicktocall.users import NoExtension, Target, extension_of

SAFE = re.compile(r"\+?[0-9]{3,20}")
RULES = compile_rules([(r"^\+1(\d{10})$", r"\1"), (r"^00", "+"), (r"^8(\d{10})$", r"+7\1")])


@pytest.mark.parametrize(
    ("raw", "dialled"),
    [
        ("+1 (830) 580-3077", "8305803077"),
        ("0049 30 1234567", "+49301234567"),
        ("8 916 123-45-67", "+79161234567"),
        ("101", "101"),
        ("+44.20.7946.0018", "+442079460018"),
    ],
)
def test_cleaned_and_rewritten(raw: str, dialled: str) -> None:
    assert dialable(raw, RULES) == dialled


@pytest.mark.parametrize(
    "raw",
    [
        "100@evil",
        "123\r\nAction: Originate",
        "123\nChannel: x",
        "*97",
        "#123",
        "12",
        "1" * 21,
        "call me",
        "١٢٣٤٥٦٧",  # Arabic-Indic digits: str.isdigit says yes, Asterisk cannot dial them
        "\uff11\uff12\uff13\uff14\uff15",  # full-width digits
        "+",
        "++123",
        "123+",
        "12 3\x00",
        "",
        "1" * 100,
        "123\n",
    ],
)
def test_refused(raw: str) -> None:
    with pytest.raises(NotDialable):
        dialable(raw, RULES)


def test_a_rule_that_makes_garbage_is_still_refused() -> None:
    with pytest.raises(NotDialable):
        dialable("12345", compile_rules([(r"^(.*)$", r"\1@evil")]))


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\+?[0-9 ()\-.]{0,30}", fullmatch=True)))
def test_ten_thousand_random_strings_never_give_anything_but_digits(raw: str) -> None:
    try:
        number = dialable(raw, RULES)
    except NotDialable:
        return
    assert SAFE.fullmatch(number), number
    assert "\r" not in number and "\n" not in number


def test_extension_from_clicktocall_users_first() -> None:
    assert extension_of(7, {7: "201"}, {"101": 7}, [""]) == Target("", "201")


def test_extension_from_notify_extensions() -> None:
    assert extension_of(7, {}, {"101": 7, "102": 8}, [""]) == Target("", "101")


@pytest.mark.parametrize(
    ("users", "notify", "pbxs", "why"),
    [
        ({}, {}, [""], "names none"),
        ({}, {"101": 7, "102": 7}, [""], "names several"),
        ({7: "101"}, {}, ["north", "south"], "does not say its PBX"),
        ({7: "east/101"}, {}, ["north", "south"], "not configured"),
        ({}, {"10 1": 7}, [""], "not an extension"),
        ({}, {"101@evil": 7}, [""], "not an extension"),
    ],
)
def test_no_extension(
    users: dict[int, str], notify: dict[str, int], pbxs: list[str], why: str
) -> None:
    with pytest.raises(NoExtension, match=why):
        extension_of(7, users, notify, pbxs)


def test_extension_on_a_named_pbx() -> None:
    assert extension_of(7, {7: "south/101"}, {}, ["north", "south"]) == Target("south", "101")
    assert extension_of(7, {}, {"101": 7}, ["north"]) == Target("north", "101")
