"""The signed token of a recording link (pure: no I/O).

A token names a call's recording by the Uniqueid that names its file and the day it was
filed under, never by a file-system path (the server finds the file again with ``pattern``),
and carries an optional expiry. It is ``PAYLOAD.SIGNATURE``, both base64url without padding:
the payload ``1:UNIQUEID:YYYYMMDD:EXPIRES`` (EXPIRES 0: none), the signature HMAC-SHA256
of it under the signing key. A new key makes every older token a foreign one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

VERSION = "1"
#: A Uniqueid as Asterisk makes them (``1700000000.42``, ``pbx1-1700000000.42``). Anything
#: else never reaches a glob pattern: no separator, no wildcard, no leading dot.
UNIQUEID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,149}")
#: The shape of a token; anything else under /recordings is a path, not a link.
TOKEN = re.compile(r"[A-Za-z0-9_-]{8,400}\.[A-Za-z0-9_-]{43}")
#: Domain separation: a signature made here means nothing to any other use of the key.
_CONTEXT = b"kommo-callerid recording link\n"


class Refusal(StrEnum):
    """Why a request is refused (``recordings.refused`` ``reason``)."""

    SIGNATURE = "signature"  # 403: changed, or signed with another key
    EXPIRED = "expired"  # 410
    PATH = "path"  # 404: not a link, or a file outside ``directory``
    MISSING = "missing"  # 404: a good link whose file is gone


@dataclass(frozen=True, slots=True)
class Claim:
    """What a verified token says."""

    uniqueid: str
    day: date
    #: Unix time after which the link is dead; 0: never.
    expires: int


def sign(key: bytes, claim: Claim) -> str:
    if not UNIQUEID.fullmatch(claim.uniqueid):
        raise ValueError("not a Uniqueid")
    payload = f"{VERSION}:{claim.uniqueid}:{claim.day:%Y%m%d}:{claim.expires}".encode()
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(key: bytes, token: str, now: float) -> Claim | Refusal:
    """The claim of a token signed with ``key`` and not expired at ``now``, else why not."""
    if not TOKEN.fullmatch(token):
        return Refusal.PATH
    encoded, _, signature = token.partition(".")
    try:
        payload = _unb64(encoded)
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        return Refusal.PATH
    # Only the canonical spelling counts: a changed character in the padding bits is a
    # changed link too, never a second name for the same one.
    canonical = _b64(payload) == encoded and _b64(given) == signature
    if not hmac.compare_digest(given, _mac(key, payload)) or not canonical:
        return Refusal.SIGNATURE
    claim = _parse(payload)
    if claim is None:  # signed by us, yet unreadable: an older format, never a path
        return Refusal.PATH
    if claim.expires and now >= claim.expires:
        return Refusal.EXPIRED
    return claim


def _parse(payload: bytes) -> Claim | None:
    try:
        version, uniqueid, day, expires = payload.decode("ascii").split(":")
        parsed = Claim(uniqueid, date(int(day[:4]), int(day[4:6]), int(day[6:8])), int(expires))
    except (UnicodeDecodeError, ValueError):
        return None
    if version != VERSION or len(day) != 8 or not UNIQUEID.fullmatch(uniqueid):
        return None
    return parsed if parsed.expires >= 0 else None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
