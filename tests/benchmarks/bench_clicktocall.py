"""Click-to-call: from a browser's ``POST /kommo/call`` leaving the client to the ``Originate``
arriving at the PBX (the fake AMI server), over TLS on loopback, one click at a time.

The daemon runs in a process of its own; the client, the fake AMI server (which stamps each
Originate's arrival with ``time.perf_counter()``, the clock the client uses) and the fake Kommo
run here. Every click carries a fresh Kommo-like token (HS256, the integration's secret), so
each one pays the whole check: signature, claims, the jti guard, the user's extension, the
number, then the caller ID's Kommo name. Warm: numbers whose name the daemon has looked up
before; cold: numbers never seen, so the name costs a lookup at the fake Kommo first (the
daemon waits at most 0.3 s for it, then shows the number). Kommo's rate limit is lifted here
(``rate_limit = 1000``), as in the latency benchmark: at 7 requests/s, clicks one after the
other would measure the limiter, while an agent clicks a few times a minute. The keep-alive
connection is opened before the timing, as a browser keeps it. The loopback HTTP round trip is
measured beside it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
from common import Child, Report, daemon_config, loopback_rtt_ms, percentile, spread

from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

CLIENT_ID = "5c1f3d2a-6b0e-4f7a-9d55-0123456789ab"
CLIENT_SECRET = "k" * 32 + "s" * 32
USER = 8375357
#: The fake Kommo's account (``GET /api/v4/account``).
ACCOUNT_ID, SUBDOMAIN = 31_415_926, "demo"
ORIGINATOR = {DEMO_USERNAME: AmiUser(DEMO_SECRET, write=frozenset({"system", "originate"}))}
WARM_NUMBER = "18305803077"  # the demo dataset's John Doe
TARGET_P99_MS = 20.0


def _token() -> str:
    now = int(time.time())
    claims = {
        "iss": f"https://{SUBDOMAIN}.kommo.com",
        "aud": "https://pbx.example.com",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 1800,
        "account_id": ACCOUNT_ID,
        "subdomain": SUBDOMAIN,
        "client_uuid": CLIENT_ID,
        "user_id": USER,
        "is_admin": False,
    }
    return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def _click(
    session: aiohttp.ClientSession, url: str, ami: FakeAmiServer, phone: str
) -> tuple[float, float]:
    """One click; (ms to the Originate at the PBX, ms to the browser's 202)."""
    token = _token()
    before = len(ami.originates)
    started = time.perf_counter()
    async with session.post(url, json={"phone": phone}, headers={"X-Auth-Token": token}) as r:
        await r.read()
        answered = time.perf_counter()
        if r.status != 202:
            raise RuntimeError(f"click answered {r.status}: {await r.text()}")
    arrived, _ = ami.originates[before]
    return (arrived - started) * 1000, (answered - started) * 1000


async def run(report: Report, quick: bool) -> None:
    clicks = 100 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="kommo-callerid-bench-click-") as temp:
        cert, key = await asyncio.to_thread(_certificate, Path(temp))
        port = _free_port()
        async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo(rate_limit=None) as kommo:
            config = daemon_config(
                ami,
                kommo,
                kommo={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "rate_limit": 1000},
                notify={"extensions": {"101": USER}},
                public={"listen": f"127.0.0.1:{port}", "tls_cert": str(cert), "tls_key": str(key)},
                clicktocall={"enabled": True, "min_interval": 0.0},
            )
            async with Child("daemon", config) as child:
                url = f"https://127.0.0.1:{port}/kommo/call"
                tls = ssl.create_default_context(cafile=str(cert))
                connector = aiohttp.TCPConnector(ssl=tls, limit=1)
                async with aiohttp.ClientSession(connector=connector) as session:
                    await _until_the_account_is_known(session, url)
                    for _ in range(20):  # warm up: the connection, the name in the cache
                        await _click(session, url, ami, WARM_NUMBER)
                    warm = [await _click(session, url, ami, WARM_NUMBER) for _ in range(clicks)]
                    cold = [await _click(session, url, ami, f"1830{n:07d}") for n in range(clicks)]
                tables = await child.ask("stats")
            rtt = await loopback_rtt_ms(f"{kommo.base_url}/no-such-path")
    rtt_p99 = percentile(rtt, 0.99)
    for name, values in (("warm", warm), ("cold", cold)):
        originate = [v[0] for v in values]
        answer = [v[1] for v in values]
        p99 = percentile(originate, 0.99)
        report.add(
            f"click -> Originate at the PBX, TLS, {name} name cache, p50 / p99 / max",
            f"{spread(originate)}; loopback RTT p99 {rtt_p99:.2f} ms",
            f"p99 ≤ {TARGET_P99_MS:g} ms",
            p99 <= TARGET_P99_MS,
        )
        report.add(f"click -> the browser's 202, {name}, p50 / p99 / max", spread(answer))
    report.add(
        "click-to-call run",
        f"{clicks} warm + {clicks} cold clicks, one at a time; daemon RSS "
        f"{tables['rss_mb']:.1f} MB",
    )


async def _until_the_account_is_known(session: aiohttp.ClientSession, url: str) -> None:
    """503 until the daemon has learnt the account from the fake Kommo."""
    for _ in range(300):
        async with session.post(
            url, json={"phone": "x"}, headers={"X-Auth-Token": _token()}
        ) as answer:
            await answer.read()
            if answer.status != 503:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("the daemon never learnt the Kommo account")
