"""Kommo's disposable tokens (``X-Auth-Token``): a JWT signed with the integration's secret.

Verified with PyJWT, the JWT library most Python services use (JOSE-conformant, typed,
maintained since 2011): HS256 only — ``none``, HS384/512 and every public-key algorithm are
refused before any key is used, which rules out the algorithm-confusion attacks —, the
client secret as key, ``exp`` / ``nbf`` / ``iat`` with :data:`LEEWAY` seconds for clock skew.
Then what PyJWT cannot know: the integration (``client_uuid`` = ``kommo.client_id``), the
account (``account_id`` and ``subdomain`` as ``GET /api/v4/account`` names them, and ``iss``
on that subdomain) and a numeric ``user_id``. The ``jti`` is required here; whether it was
used before is :mod:`.replay`'s question.

``aud`` (in Kommo's tokens: the integration's redirect origin) is not checked: the
contract's checks do not include it, and the signature with this integration's secret already
binds the token to it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from kommo_callerid.core.models import AccountInfo

ALGORITHM = "HS256"
LEEWAY = 30.0
#: Claims every token must carry (``nbf`` and ``iat`` are checked when present).
REQUIRED = ("exp", "jti", "iss", "client_uuid", "account_id", "subdomain", "user_id")
MAX_TOKEN_CHARS = 4096
MAX_ID = 2**63 - 1


class TokenRefused(ValueError):
    """The token fails a check; the message names the check (never the token)."""


@dataclass(frozen=True, slots=True)
class ClickToken:
    user_id: int
    jti: str
    #: Unix time the token expires: a replay cache may forget its jti after it (+ leeway).
    expires_at: float
    is_admin: bool = False


class TokenVerifier:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self._client_id = client_id
        self._secret = client_secret

    def verify(self, token: str, account: AccountInfo) -> ClickToken:
        """The token's user; raises :class:`TokenRefused`."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenRefused("no token" if not token else "token too long")
        claims = self._decode(token)
        if claims.get("client_uuid") != self._client_id:
            raise TokenRefused("client_uuid is not this integration's client_id")
        if _int(claims.get("account_id")) != account.id:
            raise TokenRefused("account_id is not this daemon's account")
        subdomain = claims.get("subdomain")
        if not isinstance(subdomain, str) or subdomain.lower() != account.subdomain.lower():
            raise TokenRefused("subdomain is not this daemon's account")
        if not _issued_by(claims.get("iss"), account.subdomain):
            raise TokenRefused("iss does not name this daemon's account")
        user_id = _int(claims.get("user_id"))
        if user_id is None:
            raise TokenRefused("user_id is not a Kommo user id")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 200:
            raise TokenRefused("jti is missing or not a short string")
        return ClickToken(
            user_id=user_id,
            jti=jti,
            expires_at=float(claims["exp"]),
            is_admin=claims.get("is_admin") is True,
        )

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                # The key is Kommo's client secret: its length is not ours to choose.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims: dict[str, Any] = jwt.decode(
                    token,
                    self._secret,
                    algorithms=[ALGORITHM],
                    leeway=LEEWAY,
                    options={"require": list(REQUIRED), "verify_aud": False},
                )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("signature does not match the client secret") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRefused(f"algorithm is not {ALGORITHM}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"claim {exc.claim} is missing") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(f"not a valid JWT ({type(exc).__name__})") from None
        return claims


def _int(value: object) -> int | None:
    """A positive id; Kommo may send it as a number or as a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and 0 < value <= MAX_ID:
        return value
    return None


def _issued_by(iss: object, subdomain: str) -> bool:
    """``https://{subdomain}.kommo.com`` (or amocrm.ru/.com): the subdomain's account."""
    if not isinstance(iss, str):
        return False
    host = (urlsplit(iss).hostname or "").lower()
    return host.split(".", 1)[0] == subdomain.lower() and "." in host
