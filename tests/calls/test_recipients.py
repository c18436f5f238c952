"""Who is notified, and when the everyone-fallback is due."""

from __future__ import annotations

from kommo_callerid.calls.recipients import CallRecipients
from kommo_callerid.core.config import NotifyConfig, Recipient

DID, RINGING, RESPONSIBLE = Recipient.DID, Recipient.RINGING, Recipient.RESPONSIBLE


def recipients(**kwargs: object) -> CallRecipients:
    return CallRecipients(NotifyConfig(**kwargs))  # type: ignore[arg-type]


def test_each_user_once_across_sources() -> None:
    r = recipients()
    assert r.offer(DID, [1, 2, 2]) == (1, 2)
    assert r.offer(RINGING, [2, 3]) == (3,)
    assert r.offer(RESPONSIBLE, [1, None]) == ()
    assert r.notified == {1, 2, 3}


def test_sources_not_in_to_are_ignored() -> None:
    r = recipients(to=["responsible"])
    assert r.offer(DID, [1]) == ()
    assert r.offer(RINGING, [2]) == ()
    assert r.offer(RESPONSIBLE, [3]) == (3,)


def test_fallback_after_lookup_when_not_waiting_for_ringing() -> None:
    r = recipients(to=["did", "responsible"])
    assert not r.waits_for_ringing
    assert r.offer(RESPONSIBLE, [None]) == ()
    assert r.lookup_finished() is True
    assert r.offer(RESPONSIBLE, [5]) == ()  # after the everyone-notification, nothing more
    assert r.lookup_finished() is False


def test_fallback_timer_when_waiting_for_ringing() -> None:
    r = recipients()
    assert r.lookup_finished() is False
    assert r.fallback_timer_fired() is True
    assert r.offer(RINGING, [7]) == ()


def test_no_fallback_when_someone_was_notified() -> None:
    r = recipients()
    r.offer(RINGING, [7])
    assert r.fallback_timer_fired() is False
    assert r.offer(RESPONSIBLE, [8]) == (8,)


def test_fallback_none_sends_nothing_but_later_recipients_still_count() -> None:
    r = recipients(fallback="none")
    assert r.fallback_timer_fired() is False
    assert r.offer(RESPONSIBLE, [8]) == (8,)
