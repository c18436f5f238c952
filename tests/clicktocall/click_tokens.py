"""Kommo-like disposable tokens for the click-to-call tests (what ``$authorizedAjax`` adds)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt

from kommo_callerid.core.models import AccountInfo

CLIENT_ID = "5c1f3d2a-6b0e-4f7a-9d55-0123456789ab"
#: Kommo's client secrets are 64 characters.
CLIENT_SECRET = "k" * 32 + "s" * 32
ACCOUNT = AccountInfo(id=31_415_926, name="Demo account", subdomain="demo")
USER = 8375357


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": f"https://{ACCOUNT.subdomain}.kommo.com",
        "aud": "https://pbx.example.com",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 1800,
        "account_id": ACCOUNT.id,
        "subdomain": ACCOUNT.subdomain,
        "client_uuid": CLIENT_ID,
        "user_id": USER,
        "is_admin": False,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def token(secret: str = CLIENT_SECRET, algorithm: str = "HS256", **changes: Any) -> str:
    """A signed token; a claim given as None is left out."""
    return jwt.encode(claims(**changes), secret, algorithm=algorithm)


def unsigned_token(**changes: Any) -> str:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(**changes)).encode())
    return f"{header}.{payload}."


def forged_header_token(alg: str, **changes: Any) -> str:
    """Signed with HS256 and the right secret, but its header claims ``alg``."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(**changes)).encode())
    signing_input = f"{header}.{payload}".encode()
    import hashlib
    import hmac

    signature = hmac.new(CLIENT_SECRET.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
