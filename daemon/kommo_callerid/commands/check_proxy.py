"""The proxy part of ``kommo-callerid check``: which proxy the Kommo requests went through,
and, when they failed, whether it was the proxy that did not answer or what lies beyond it."""

from __future__ import annotations

import asyncio
import contextlib

from kommo_callerid.commands.report import Report
from kommo_callerid.core.models import KommoError
from kommo_callerid.kommo.proxy import ProxyChoice

_CONNECT_TIMEOUT = 5.0
_CREDENTIALS_FIX = (
    "put the proxy URL with its user:password (http://user:password@host:port) into the "
    "credential file kommo_proxy (/etc/kommo-callerid/credentials/kommo_proxy under systemd)"
)


def report_proxy_used(choice: ProxyChoice, report: Report) -> None:
    report.ok(f"Kommo: through the proxy {choice.shown} (from {choice.source}); it answered")


async def report_proxy_failure(choice: ProxyChoice, exc: KommoError, report: Report) -> None:
    """A Kommo request through ``choice`` got no usable answer: say whose fault it is."""
    where = f"the proxy {choice.shown} (from {choice.source})"
    fix_setting = "[kommo] proxy" if choice.source.startswith("[") else choice.source
    if exc.status == 407 or "407" in exc.detail:
        report.fail(f"Kommo: {where} wants credentials (HTTP 407)", _CREDENTIALS_FIX)
        return
    refused = await _unreachable(choice)
    if refused:
        report.fail(
            f"Kommo: {where} did not answer ({refused})",
            f"check {fix_setting} (host and port of the proxy), or empty it to go direct",
        )
        return
    report.fail(
        f"Kommo: {where} answered, but no answer from Kommo came through it ({exc.detail})",
        "let the proxy reach the Kommo account (*.kommo.com:443); see the proxy's log",
    )


async def _unreachable(choice: ProxyChoice) -> str:
    """Why a TCP connection to the proxy fails; empty when it is accepted."""
    host, port = choice.host_port
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection within {_CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ""
