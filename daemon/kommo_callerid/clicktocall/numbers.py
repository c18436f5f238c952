"""The number a click dials: cleaned, rewritten by ``dial_rules``, then 3-20 ASCII digits.

Anything else is refused before AMI sees it: the number becomes the Originate's ``Exten``
header, so a line break would inject AMI headers, and ``100@evil``, ``*97`` or letters would
dial something other than a customer. Digits are ``[0-9]`` only: Python's ``\\d`` and
``str.isdigit`` also accept Arabic-Indic and other digits Asterisk does not dial.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: What a person writes between digits; it carries no meaning for a dial.
_SEPARATORS = str.maketrans("", "", " -.()\u00a0")
#: Longer input is no phone number; refusing it early also bounds the rules' regex work.
MAX_INPUT = 64
DIALABLE = re.compile(r"\+?[0-9]{3,20}")


class NotDialable(ValueError):
    """The number cannot be dialled; the message says why (without the number)."""


@dataclass(frozen=True, slots=True)
class DialRule:
    pattern: re.Pattern[str]
    replacement: str


def compile_rules(rules: Iterable[tuple[str, str]]) -> tuple[DialRule, ...]:
    return tuple(DialRule(re.compile(pattern), replacement) for pattern, replacement in rules)


def dialable(raw: str, rules: Iterable[DialRule]) -> str:
    """The number to dial; raises :class:`NotDialable`."""
    if len(raw) > MAX_INPUT:
        raise NotDialable(f"longer than {MAX_INPUT} characters")
    number = raw.translate(_SEPARATORS)
    for rule in rules:
        rewritten, count = rule.pattern.subn(rule.replacement, number, count=1)
        if count:
            number = rewritten
            break
    # fullmatch, and no $: "$" would also match before a trailing newline.
    if DIALABLE.fullmatch(number) is None or not number.isascii():
        raise NotDialable("not 3-20 digits (a leading + allowed) after the dial rules")
    return number
