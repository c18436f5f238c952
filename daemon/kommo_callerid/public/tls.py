"""The public endpoint's TLS: a server context from ``tls_cert`` / ``tls_key``, re-read on
SIGHUP so a renewed certificate (certbot) needs no restart.

A reload builds a fresh context first: a missing file, a key that does not match the chain
or a half-written renewal is logged (``public.tls_reload_failed``) and the running context
stays. The next connection's handshake uses the new one (the listener asks for
:attr:`ReloadableTls.context` at every accept); established connections keep theirs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsError(f"tls_cert {files.cert} / tls_key {files.key}: {why}") from None
    return context


class ReloadableTls:
    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = server_context(files)

    def reload(self, files: TlsFiles) -> bool:
        """Re-read the files (maybe new paths); False (logged) keeps the running context."""
        try:
            context = server_context(files)
        except TlsError as exc:
            log.error("public.tls_reload_failed", detail=str(exc), hint="the old certificate stays")
            return False
        self.files, self.context = files, context
        log.info("public.tls_reloaded", cert=files.cert)
        return True
