"""Several PBXs, one call pipeline: a :class:`CallTracker` and an :class:`OutcomeTracker` per
PBX, each kind behind one ``feed``.

Each PBX has its own trackers, so the same Linkedid on two PBXs is two calls, a lost link
forgets only its own PBX's calls, each PBX keeps its own inbound contexts, and a flood on
one PBX never evicts another's calls from the tracker's bounded table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from kommo_callerid.calls.detector import CallTracker, Decision
from kommo_callerid.calls.outcome import OutcomeTracker
from kommo_callerid.calls.outcome_verdict import Click
from kommo_callerid.core.models import ChannelEvent, FinishedCall


class PbxCallTrackers:
    """The call tracker interface (``feed``, ``expire``, ``len``) over one tracker per PBX."""

    def __init__(self, trackers: Iterable[tuple[str, CallTracker]]) -> None:
        self._trackers = dict(trackers)

    @classmethod
    def build(
        cls,
        pbxs: Iterable[tuple[str, Iterable[str]]],
        min_digits: int,
        default_region: str = "",
    ) -> PbxCallTrackers:
        """One tracker per (name, inbound contexts)."""
        return cls(
            (name, CallTracker(contexts, min_digits, default_region, pbx=name))
            for name, contexts in pbxs
        )

    def __len__(self) -> int:
        return sum(len(tracker) for tracker in self._trackers.values())

    def reconfigure(
        self, pbxs: Iterable[tuple[str, Iterable[str]]], min_digits: int, default_region: str = ""
    ) -> None:
        """New rules (SIGHUP) for the PBXs already running; a new PBX needs a restart."""
        for name, contexts in pbxs:
            if (tracker := self._trackers.get(name)) is not None:
                tracker.reconfigure(contexts, min_digits, default_region)

    def feed(self, event: ChannelEvent) -> list[Decision]:
        tracker = self._trackers.get(event.pbx)
        return tracker.feed(event) if tracker is not None else []

    def expire(self, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        for tracker in self._trackers.values():
            decisions.extend(tracker.expire(now))
        return decisions


class PbxOutcomeTrackers:
    """The outcome tracker interface (``feed``, ``expire``, ``len``) over one per PBX."""

    def __init__(self, trackers: Iterable[tuple[str, OutcomeTracker]]) -> None:
        self._trackers = dict(trackers)

    @classmethod
    def build(
        cls,
        pbxs: Iterable[tuple[str, Iterable[str], Iterable[str]]],
        min_digits: int,
        default_region: str = "",
        *,
        wall_offset: float = 0.0,
    ) -> PbxOutcomeTrackers:
        """One tracker per (name, inbound contexts, outbound contexts)."""
        return cls(
            (
                name,
                OutcomeTracker(
                    inbound,
                    outbound,
                    min_digits,
                    default_region,
                    pbx=name,
                    wall_offset=wall_offset,
                ),
            )
            for name, inbound, outbound in pbxs
        )

    def __len__(self) -> int:
        return sum(len(tracker) for tracker in self._trackers.values())

    def reconfigure(
        self,
        pbxs: Iterable[tuple[str, Iterable[str], Iterable[str]]],
        min_digits: int,
        default_region: str = "",
    ) -> None:
        """New rules (SIGHUP) for the PBXs already running; a new PBX needs a restart."""
        for name, inbound, outbound in pbxs:
            if (tracker := self._trackers.get(name)) is not None:
                tracker.reconfigure(inbound, outbound, min_digits, default_region)

    def feed(self, event: ChannelEvent) -> list[FinishedCall]:
        tracker = self._trackers.get(event.pbx)
        return tracker.feed(event) if tracker is not None else []

    def expect_click(self, pbx: str, uniqueid: str, click: Click) -> None:
        """Click-to-call: the call whose root gets ``uniqueid`` is ``click``'s (see
        :meth:`OutcomeTracker.expect_click`)."""
        if (tracker := self._trackers.get(pbx)) is not None:
            tracker.expect_click(uniqueid, click)

    def expire(self, now: float) -> int:
        return sum(tracker.expire(now) for tracker in self._trackers.values())

    def untracked(self) -> dict[str, int]:
        """Every PBX's calls forgotten before their end (never journaled), by reason."""
        total: Counter[str] = Counter()
        for tracker in self._trackers.values():
            total.update(tracker.stats.untracked())
        return dict(total)
