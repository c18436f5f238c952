"""The Kommo half of ``kommo-callerid check``: call ``GET /api/v4/account`` once and say, in
words an operator can act on, whose account the token opens or exactly what is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from kommo_callerid.commands.check_proxy import report_proxy_failure, report_proxy_used
from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config, KommoConfig
from kommo_callerid.core.models import AccountInfo, KommoAuthError, KommoError
from kommo_callerid.kommo.auth import TokenFileUnusable
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.kommo.proxy import proxy_for

#: A long-lived token this close to its expiry date gets a warning.
EXPIRY_WARNING_DAYS = 14
_DNS_TIMEOUT = 5.0

_RENEW_ACCESS = (
    "create a new long-lived token (Kommo: Settings > Integrations > your private integration "
    "> Keys and scopes) and put it in [kommo] access_token, or in the kommo_access_token "
    "credential file (/etc/kommo-callerid/credentials/kommo_access_token under systemd)"
)
_URL_FIX = (
    "set [kommo] base_url to https://<subdomain>.kommo.com, the address you open Kommo at "
    "(amoCRM accounts: https://<subdomain>.amocrm.ru / .amocrm.com)"
)


_ACCOUNT_FIX = (
    "sign in to Kommo as an administrator and check the account's status and payment; "
    "the private integration of [kommo] access_token must be installed in this account"
)


@dataclass(frozen=True, slots=True)
class Finding:
    text: str
    fix: str


def kommo_client(config: Config) -> KommoClient:
    """The one place check builds a Kommo client (its construction may gain a token provider)."""
    return KommoClient(config.kommo, config.cache, warm=False)  # one request: nothing to warm


async def check_kommo(config: Config, report: Report) -> None:
    warn_if_token_expires_soon(config.kommo, report)
    proxy = proxy_for(config.kommo)
    async with kommo_client(config) as kommo:
        try:
            account = await kommo.account()
        except KommoError as exc:
            if proxy is not None and (exc.status is None or exc.status == 407):
                await report_proxy_failure(proxy, exc, report)
                return
            finding = await explain_failure(exc, config.kommo)
            report.fail(finding.text, finding.fix)
            return
    if proxy is not None:
        report_proxy_used(proxy, report)
    report.ok(f"Kommo: the token opens account {_describe(account)}")
    host = urlsplit(config.kommo.base_url).hostname or ""
    if account.subdomain and not _is_loopback(host) and not host.startswith(account.subdomain):
        report.warn(
            f"Kommo: the account's subdomain is {account.subdomain!r} but base_url is {host}",
            f"set [kommo] base_url to https://{account.subdomain}.kommo.com",
        )


def warn_if_token_expires_soon(config: KommoConfig, report: Report) -> None:
    expires = token_expiry(config.access_token.get_secret_value())
    if expires is None:
        return
    days = (expires - datetime.now(UTC)).days
    if 0 <= days < EXPIRY_WARNING_DAYS:
        report.warn(
            f"Kommo: the access token expires on {expires:%Y-%m-%d} ({days} days)", _RENEW_ACCESS
        )


def token_expiry(token: str) -> datetime | None:
    """A long-lived Kommo token is a JWT; its ``exp`` claim, read without verifying anything.

    Only the date leaves this function, never the token or its other claims.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return datetime.fromtimestamp(exp, UTC)


async def explain_failure(exc: KommoError, config: KommoConfig) -> Finding:
    if isinstance(exc, TokenFileUnusable):  # the detail carries the fix after its "; "
        problem, _, fix = exc.detail.partition("; ")
        return Finding(f"Kommo OAuth: {problem}", fix or "check the token file's owner")
    if isinstance(exc, KommoAuthError):
        return Finding(
            f"Kommo OAuth: {exc.detail}",
            "get a new authorisation code (Kommo: Settings > Integrations > your integration > "
            "Keys and scopes) and run `kommo-callerid authorize CODE` within 20 minutes",
        )
    if exc.status is None:
        return await _transport_failure(exc, config)
    status, said = exc.status, f"Kommo says: {exc.detail}"
    if status == 401:
        return _unauthorised(exc, config)
    if status == 402:
        return Finding(f"Kommo: the account is not paid (HTTP 402; {said})", _ACCOUNT_FIX)
    if status == 403:
        text = (
            f"Kommo: access forbidden (HTTP 403; {said}): the account is blocked, "
            "or the API is closed to this server's IP address"
        )
        return Finding(text, _ACCOUNT_FIX + "; allow this server's public IP if access is limited")
    if status == 429:
        text = f"Kommo: rate-limited (HTTP 429; {said}): too many API requests on this account"
        fix = "wait a minute and run check again; if it persists, lower [kommo] rate_limit or "
        return Finding(text, fix + "find the other integration that floods the API")
    if status in (404, 405) or 300 <= status < 400 or "content type" in exc.detail:
        text = f"Kommo: {config.base_url} is not a Kommo API (HTTP {status}; {exc.detail})"
        return Finding(f"{text}: wrong subdomain or host", _URL_FIX)
    if status >= 500:
        return Finding(f"Kommo: server error (HTTP {status}; {said})", "try again later")
    return Finding(f"Kommo: HTTP {status} for {exc.endpoint} ({said})", _URL_FIX)


def _unauthorised(exc: KommoError, config: KommoConfig) -> Finding:
    expires = token_expiry(config.access_token.get_secret_value())
    said = f"Kommo says: {exc.detail}"
    if "expire" in exc.detail.lower() or (expires is not None and expires < datetime.now(UTC)):
        when = f" on {expires:%Y-%m-%d}" if expires else ""
        return Finding(f"Kommo: the access token expired{when} (HTTP 401; {said})", _RENEW_ACCESS)
    text = (
        f"Kommo: the access token is refused (HTTP 401; {said}): revoked, mistyped, "
        f"or issued for another account than {config.base_url}"
    )
    return Finding(text, f"{_RENEW_ACCESS}; base_url must be that token's account")


async def _transport_failure(exc: KommoError, config: KommoConfig) -> Finding:
    url = urlsplit(config.base_url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    if "DNSError" in exc.detail or not await _resolves(host, port):
        text = f"Kommo: the host name {host} does not resolve: wrong subdomain or host"
        return Finding(text, f"{_URL_FIX}; check this server's DNS (/etc/resolv.conf)")
    if "refused" in exc.detail.lower() or "Connect call failed" in exc.detail:
        text = f"Kommo: {host}:{port} refused the connection: wrong host or port"
        return Finding(text, _URL_FIX)
    if exc.detail.startswith("no answer within"):
        text = f"Kommo: {host} did not answer ({exc.detail})"
        fix = "let this server reach the Internet over HTTPS (firewall, proxy); "
        return Finding(text, fix + "raise [kommo] timeout on a slow link")
    text = f"Kommo: cannot talk to {host}:{port} ({exc.detail})"
    return Finding(text, f"{_URL_FIX}; for TLS errors update this server's CA certificates")


async def _resolves(host: str, port: int) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_DNS_TIMEOUT):
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return False
    return True


def _describe(account: AccountInfo) -> str:
    name = account.name or "(no name)"
    return f"{name!r} (subdomain {account.subdomain or '?'}, id {account.id})"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
