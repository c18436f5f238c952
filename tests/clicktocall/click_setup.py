"""A daemon with the public endpoint over real TLS, the fake AMI and the fake Kommo."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from click_tokens import CLIENT_ID, CLIENT_SECRET, USER

from kommo_callerid.core.config import Config
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import make_config

#: The AMI user of these tests may originate (manager.conf ``write = system,originate``).
ORIGINATOR = {DEMO_USERNAME: AmiUser(DEMO_SECRET, write=frozenset({"system", "originate"}))}
PAGE_ORIGIN = "https://crm.example.com"


def self_signed(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def click_config(
    ami: FakeAmiServer, kommo: FakeKommo, cert: Path, key: Path, **sections: dict[str, Any]
) -> Config:
    base: dict[str, dict[str, Any]] = {
        "kommo": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "public": {
            "listen": "127.0.0.1:0",
            "url": "https://127.0.0.1",
            "tls_cert": str(cert),
            "tls_key": str(key),
            "origins": [PAGE_ORIGIN],
        },
        "clicktocall": {"enabled": True, "dial_rules": [[r"^\+1(\d{10})$", r"1\1"]]},
        "notify": {"fallback_after": 0.3, "extensions": {"101": USER}},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return make_config(ami, kommo, **base)


async def post_click(
    session: aiohttp.ClientSession,
    url: str,
    token: str | None,
    phone: object = "+1 (830) 580-3077",
    **extra: object,
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Auth-Token": token} if token is not None else {}
    body = {"phone": phone, **extra}
    async with session.post(f"{url}/kommo/call", json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)
