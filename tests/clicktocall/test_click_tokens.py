"""Every check of a Kommo disposable token, each with a token that fails only that check."""

from __future__ import annotations

import time

import jwt
import pytest
from click_tokens import (
    ACCOUNT,
    CLIENT_ID,
    CLIENT_SECRET,
    USER,
    forged_header_token,
    token,
    unsigned_token,
)

from kommo_callerid.clicktocall.replay import MemoryReplayGuard
from kommo_callerid.clicktocall.tokens import TokenRefused, TokenVerifier
from kommo_callerid.core.models import AccountInfo

from support import ManualClock

VERIFIER = TokenVerifier(CLIENT_ID, CLIENT_SECRET)


def refused(raw: str, account: AccountInfo = ACCOUNT) -> str:
    with pytest.raises(TokenRefused) as caught:
        VERIFIER.verify(raw, account)
    return str(caught.value)


def test_a_good_token_names_its_user() -> None:
    checked = VERIFIER.verify(token(), ACCOUNT)
    assert checked.user_id == USER
    assert checked.expires_at > time.time()


def test_user_id_as_a_string_of_digits_is_read() -> None:
    assert VERIFIER.verify(token(user_id=str(USER)), ACCOUNT).user_id == USER


def test_wrong_secret() -> None:
    assert "signature" in refused(token(secret="x" * 64))


def test_expired_beyond_the_leeway() -> None:
    now = int(time.time())
    assert refused(token(exp=now - 31, iat=now - 1800, nbf=now - 1800)) == "expired"


def test_expired_within_the_leeway_passes() -> None:
    now = int(time.time())
    assert VERIFIER.verify(token(exp=now - 20), ACCOUNT).user_id == USER


def test_not_valid_yet() -> None:
    now = int(time.time())
    assert "not valid yet" in refused(token(nbf=now + 120))
    assert "not valid yet" in refused(token(iat=now + 120))


def test_alg_none() -> None:
    assert "algorithm" in refused(unsigned_token())


@pytest.mark.parametrize("alg", ["HS512", "HS384", "RS256", "ES256", "none"])
def test_a_header_naming_another_algorithm(alg: str) -> None:
    assert "algorithm" in refused(forged_header_token(alg))


def test_hs512_signed_with_the_right_secret() -> None:
    assert "algorithm" in refused(token(algorithm="HS512"))


def test_other_client_uuid() -> None:
    assert "client_uuid" in refused(token(client_uuid="another-integration"))


def test_other_account_id() -> None:
    assert "account_id" in refused(token(account_id=ACCOUNT.id + 1))


def test_other_subdomain() -> None:
    assert "subdomain" in refused(token(subdomain="evil"))


def test_iss_of_another_account() -> None:
    assert "iss" in refused(token(iss="https://evil.kommo.com"))
    assert "iss" in refused(token(iss="https://demo"))


@pytest.mark.parametrize(
    "claim", ["user_id", "jti", "exp", "account_id", "subdomain", "client_uuid", "iss"]
)
def test_missing_claim(claim: str) -> None:
    assert claim in refused(token(**{claim: None}))


@pytest.mark.parametrize("user_id", [0, -5, "abc", True, 2**63, 1.5])
def test_user_id_that_is_no_user(user_id: object) -> None:
    assert "user_id" in refused(token(user_id=user_id))


def test_garbage_and_empty() -> None:
    assert refused("") == "no token"
    assert "not a valid JWT" in refused("not.a.jwt")
    assert "too long" in refused("e" * 5000)


def test_no_warning_for_a_short_secret() -> None:
    # filterwarnings = error: a warning would fail here. Kommo chooses the secret's length.
    short = TokenVerifier(CLIENT_ID, "short")
    with pytest.raises(TokenRefused):
        short.verify(jwt.encode({"a": 1}, "x" * 40, algorithm="HS256"), ACCOUNT)


async def test_a_jti_is_spent_once() -> None:
    clock = ManualClock()  # 1000.0
    guard = MemoryReplayGuard(clock, keep_after=30.0)
    assert await guard.first_use("a", 1100.0)
    assert not await guard.first_use("a", 1100.0)
    clock.advance(129.0)  # 1129: the token expired at 1100, +30 s leeway
    assert not await guard.first_use("a", 1100.0)
    clock.advance(2.0)
    assert await guard.first_use("a", 1300.0)  # forgotten only once no check could pass it


async def test_a_full_guard_refuses_rather_than_forgets() -> None:
    clock = ManualClock()  # 1000.0
    guard = MemoryReplayGuard(clock, keep_after=30.0, limit=2)
    assert await guard.first_use("a", 1010.0)
    assert await guard.first_use("b", 1010.0)
    assert not await guard.first_use("c", 1010.0)
    assert not await guard.first_use("a", 1010.0)
    clock.advance(41.0)
    assert await guard.first_use("c", 1100.0)
    assert len(guard) == 1
