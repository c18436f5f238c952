"""SIGHUP with the public endpoint running: a changed ``[public] listen`` is reported as
``config.restart_needed`` (the listener stays where it is), while renewed TLS files serve the
next connection and ``[clicktocall]`` applies, all without a restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from click_setup import ORIGINATOR, PAGE_ORIGIN, client_tls, post_click, self_signed
from click_tokens import CLIENT_ID, CLIENT_SECRET, USER, token
from structlog.testing import capture_logs

from kommo_callerid.core.config_load import load_config
from kommo_callerid.daemon.app import EXIT_OK, Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import events, temp_journal, wait_for

#: One journal for both versions of the file (``[journal] database`` needs a restart).
JOURNAL = temp_journal()


def toml(sections: dict[str, dict[str, Any]]) -> str:
    """Tables of strings, numbers, booleans, lists, and one level of sub-tables."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if k not in tables]
        for key, table in tables.items():
            lines.append(f"[{name}.{key}]")
            lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def config_file(
    ami: FakeAmiServer, kommo: FakeKommo, cert: Path, key: Path, *, listen: str, interval: float
) -> str:
    return toml(
        {
            "ami": {
                "port": ami.port,
                "username": DEMO_USERNAME,
                "secret": DEMO_SECRET,
                "reconnect_min": 0.05,
                "reconnect_max": 0.2,
            },
            "kommo": {
                "base_url": kommo.base_url,
                "access_token": kommo.token,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            "notify": {"fallback_after": 0.3, "extensions": {"101": USER}},
            "daemon": {"shutdown_timeout": 2.0},
            "journal": {"database": JOURNAL},
            "public": {
                "listen": listen,
                "url": "https://127.0.0.1",
                "tls_cert": str(cert),
                "tls_key": str(key),
                "origins": [PAGE_ORIGIN],
            },
            "clicktocall": {"enabled": True, "min_interval": interval},
        }
    )


async def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


async def test_sighup_names_public_listen_and_reloads_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "..", "first")
    renewed_cert, renewed_key = self_signed(tmp_path / "..", "renewed")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    path = tmp_path / "config.toml"
    async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo() as kommo:
        path.write_text(
            config_file(ami, kommo, live_cert, live_key, listen="127.0.0.1:0", interval=3600.0)
        )
        daemon = Daemon(load_config(path), config_path=path)
        with capture_logs() as logs:
            serving = asyncio.create_task(daemon.serve())
            try:
                await wait_for(lambda: bool(events(logs, "clicktocall.account")), 10.0)
                port = daemon.public_port
                assert port is not None
                assert await served_certificate(port) == cert_der(cert)
                url = f"https://127.0.0.1:{port}"

                # certbot renews in place; the operator also moves the listener and lifts
                # min_interval, then reloads
                shutil.copy(renewed_cert, live_cert)
                shutil.copy(renewed_key, live_key)
                text = config_file(
                    ami, kommo, live_cert, live_key, listen="127.0.0.1:18443", interval=0.0
                )
                path.write_text(text)
                daemon.reload.set()
                await wait_for(lambda: bool(events(logs, "config.reloaded")), 10.0)

                [restart] = events(logs, "config.restart_needed")
                assert restart["keys"] == ["public.listen"]
                [reloaded] = events(logs, "config.reloaded")
                assert "clicktocall.min_interval" in reloaded["changed"]
                assert "public.listen" not in reloaded["changed"]
                assert events(logs, "public.tls_reloaded")
                assert daemon.public_port == port  # still where it was bound
                assert daemon.config.public.listen == "127.0.0.1:0"
                assert await served_certificate(port) == cert_der(renewed_cert)
                connector = aiohttp.TCPConnector(ssl=client_tls(renewed_cert))
                async with aiohttp.ClientSession(connector=connector) as session:
                    assert (await post_click(session, url, token()))[0] == 202
                    assert (await post_click(session, url, token()))[0] == 202  # interval 0
            finally:
                daemon.stop.set()
                assert await serving == EXIT_OK
    assert len(ami.originates) == 2


def cert_der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())
