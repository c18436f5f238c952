"""The seed's by_phone algorithm, pure: which record answers for the owners of one number.

The last 7 digits; companies first, else contacts; when exactly one of those owners has one
deal (exactly one active lead and no customer, or exactly one customer and no active lead),
that deal with the owner as ``phone_entity``; otherwise the oldest owner (``created_at``,
then id). Property-tested against the fake Kommo's own by_phone on random datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kommo_callerid.core.models import Entity

#: Kommo's telephony search matches on this many trailing digits.
MATCH_DIGITS = 7


@dataclass(frozen=True, slots=True)
class Candidate:
    """An owner of the number (all of one kind: companies, or contacts) and its deals."""

    owner: Entity
    created_at: int
    #: Its active leads (neither won nor lost).
    leads: tuple[Entity, ...] = ()
    customers: tuple[Entity, ...] = ()

    @property
    def deal(self) -> Entity | None:
        if len(self.leads) == 1 and not self.customers:
            return self.leads[0]
        if len(self.customers) == 1 and not self.leads:
            return self.customers[0]
        return None


def match_key(digits: str) -> int | None:
    """The index key of a number: its last 7 digits; None when it has fewer."""
    if len(digits) < MATCH_DIGITS:
        return None
    return int(digits[-MATCH_DIGITS:])


def choose(candidates: Sequence[Candidate]) -> tuple[Entity, Entity | None] | None:
    """(entity, phone_entity) as by_phone answers for these owners; None when there are none."""
    if not candidates:
        return None
    with_deal = [(candidate, deal) for candidate in candidates if (deal := candidate.deal)]
    if len(with_deal) == 1:
        candidate, deal = with_deal[0]
        return deal, candidate.owner
    oldest = min(candidates, key=lambda candidate: (candidate.created_at, candidate.owner.id))
    return oldest.owner, None
