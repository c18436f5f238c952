"""Who gets one call's notification, and when the everyone-fallback is due.

Pure bookkeeping for the contract's rules: recipients come from ``did`` (at once),
``ringing`` (per ringing leg) and ``responsible`` (when the lookup returns); each user is
notified at most once per call; if nobody was notified when no more recipients can be
expected, ``fallback = "all"`` sends one notification to everyone and closes the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from kommo_callerid.core.config import NotifyConfig, Recipient

T = TypeVar("T")


def for_pbx(mapping: Mapping[str, T], pbx: str, key: str) -> T | None:
    """``[notify.extensions]`` / ``[notify.dids]`` lookup: ``NAME/KEY`` first, then ``KEY``.

    Extension 101 on two PBXs is two people: ``north/101`` names north's only; a bare ``101``
    applies to every PBX without a ``NAME/101`` of its own.
    """
    if pbx:
        scoped = mapping.get(f"{pbx}/{key}")
        if scoped is not None:
            return scoped
    return mapping.get(key)


class CallRecipients:
    def __init__(self, config: NotifyConfig) -> None:
        self._to = frozenset(config.to)
        self._fallback_all = config.fallback == "all"
        self._notified: set[int] = set()
        self._fallback_decided = False
        self._closed = False

    @property
    def notified(self) -> frozenset[int]:
        return frozenset(self._notified)

    @property
    def waits_for_ringing(self) -> bool:
        """With ``ringing`` in ``to``, the fallback waits ``fallback_after`` for a ringing leg."""
        return Recipient.RINGING in self._to

    def offer(self, source: Recipient, users: Iterable[int | None]) -> tuple[int, ...]:
        """The users from ``source`` to notify now: configured, known, and not yet notified."""
        if self._closed or source not in self._to:
            return ()
        fresh = tuple(u for u in dict.fromkeys(users) if u is not None and u not in self._notified)
        self._notified.update(fresh)
        return fresh

    def notified_before(self, users: Iterable[int], everyone: bool) -> None:
        """Another daemon already notified ``users`` (or everyone) for this call before it
        handed the call over: they are not notified again."""
        self._notified.update(users)
        if everyone:
            self._fallback_decided = self._closed = True

    def lookup_finished(self) -> bool:
        """True when the everyone-fallback is to be sent now (``ringing`` not in ``to``)."""
        return not self.waits_for_ringing and self._decide_fallback()

    def fallback_timer_fired(self) -> bool:
        """True when the everyone-fallback is to be sent now (``ringing`` in ``to``)."""
        return self.waits_for_ringing and self._decide_fallback()

    def _decide_fallback(self) -> bool:
        if self._fallback_decided:
            return False
        self._fallback_decided = True
        if self._notified or not self._fallback_all:
            return False
        self._closed = True  # after the everyone-notification nothing more is sent
        return True
