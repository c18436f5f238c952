"""Which proxy, if any, carries the Kommo requests.

``[kommo] proxy`` (or the credential file ``kommo_proxy``, which wins: a URL with its
``user:password``) names an http(s) proxy for every request. Left empty, the standard
``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` environment applies, read the way aiohttp's
``trust_env=True`` reads it, but once: every request goes to the one ``base_url``, and
``trust_env`` would cost a thread hop per request (and read ``~/.netrc``). The transport and
``check`` both ask :func:`proxy_for`, so what check reports is what the daemon does.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from kommo_callerid.core.config import KommoConfig


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    #: The proxy URL as aiohttp gets it, credentials included.
    url: str
    #: Where it came from: ``[kommo] proxy`` or the environment variable's name.
    source: str

    @property
    def shown(self) -> str:
        """The URL without its password, for reports."""
        return without_password(self.url)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def proxy_for(config: KommoConfig) -> ProxyChoice | None:
    """The proxy a request to ``base_url`` goes through, and why; None: a direct connection."""
    if config.proxy:
        return ProxyChoice(config.proxy, "[kommo] proxy")
    target = urlsplit(config.base_url)
    host = target.hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    url = urllib.request.getproxies_environment().get(target.scheme)
    if not url:
        return None
    return ProxyChoice(url, f"{target.scheme.upper()}_PROXY")


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
