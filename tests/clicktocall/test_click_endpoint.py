"""Click-to-call end to end: the daemon's public endpoint over real TLS, the fake AMI, the fake
Kommo. Every answer of the contract (202/400/401/403/429/502/503), CORS, and 404 for the rest."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click_setup import (
    ORIGINATOR,
    PAGE_ORIGIN,
    click_config,
    client_tls,
    post_click,
    self_signed,
)
from click_tokens import USER, token
from structlog.testing import capture_logs

from kommo_callerid.core.config import Config
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import ACCOUNT_PATH, FakeKommo

from support import events, running_daemon, wait_for


@dataclass
class Endpoint:
    daemon: Daemon
    ami: FakeAmiServer
    kommo: FakeKommo
    session: aiohttp.ClientSession
    url: str
    logs: list[dict[str, Any]]


def account_known(logs: list[dict[str, Any]]) -> bool:
    return any(line["event"] == "clicktocall.account" for line in logs)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


async def _endpoint(
    tls_files: tuple[Path, Path],
    users: dict[str, AmiUser] | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[Endpoint]:
    cert, key = tls_files
    async with FakeAmiServer(users=users or ORIGINATOR) as ami, FakeKommo() as kommo:
        config: Config = click_config(ami, kommo, cert, key, **sections)
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                await wait_for(lambda: daemon.public_port is not None)
                connector = aiohttp.TCPConnector(ssl=client_tls(cert))
                async with aiohttp.ClientSession(connector=connector) as session:
                    url = f"https://127.0.0.1:{daemon.public_port}"
                    yield Endpoint(daemon, ami, kommo, session, url, logs)


@pytest.fixture
async def endpoint(tls_files: tuple[Path, Path]) -> AsyncIterator[Endpoint]:
    async for made in _endpoint(tls_files):
        await wait_for(lambda: account_known(made.logs))  # noqa: B023  (awaited here)
        yield made


async def test_202_the_pbx_originates_the_users_call(endpoint: Endpoint) -> None:
    status, body = await post_click(endpoint.session, endpoint.url, token(), extension="999")
    assert (status, body) == (202, {"extension": "101", "number": "18305803077"})
    [(_, action)] = endpoint.ami.originates
    assert action["channel"] == "Local/101@from-internal"  # not the 999 the body named
    assert action["context"] == "from-internal"
    assert action["exten"] == "18305803077"
    assert action["priority"] == "1"
    assert action["async"] == "true"
    assert action["timeout"] == "30000"
    assert action["callerid"] == "John Doe <18305803077>"  # the Kommo name of the number
    assert action["variable"] == f"KOMMO_CALLERID_CLICK={USER}"
    assert action["channelid"].startswith("kommo-click-")
    [line] = events(endpoint.logs, "clicktocall.originated")
    assert line["user_id"] == USER and line["extension"] == "101"


async def test_a_form_body_works_too(endpoint: Endpoint) -> None:
    async with endpoint.session.post(
        f"{endpoint.url}/kommo/call",
        data={"phone": "18305803077"},
        headers={"X-Auth-Token": token()},
    ) as response:
        assert response.status == 202


async def test_me_names_the_users_extension(endpoint: Endpoint) -> None:
    async with endpoint.session.get(
        f"{endpoint.url}/kommo/me", headers={"X-Auth-Token": token()}
    ) as response:
        assert response.status == 200
        assert await response.json() == {"user_id": USER, "extension": "101"}


@pytest.mark.parametrize(
    "bad",
    [None, "", "garbage", token(secret="w" * 64), token(algorithm="HS512"), token(user_id=None)],
    ids=["none", "empty", "garbage", "wrong-secret", "hs512", "no-user"],
)
async def test_401_for_a_token_that_fails(endpoint: Endpoint, bad: str | None) -> None:
    status, body = await post_click(endpoint.session, endpoint.url, bad)
    assert (status, body) == (401, {"error": "token"})  # which check failed stays in the log
    assert endpoint.ami.originates == []


async def test_401_for_a_replayed_token(endpoint: Endpoint) -> None:
    once = token()
    assert (await post_click(endpoint.session, endpoint.url, once))[0] == 202
    assert (await post_click(endpoint.session, endpoint.url, once))[0] == 401
    assert len(endpoint.ami.originates) == 1


async def test_403_for_a_user_without_extension(endpoint: Endpoint) -> None:
    status, body = await post_click(endpoint.session, endpoint.url, token(user_id=424242))
    assert status == 403 and body["error"] == "user"
    [line] = events(endpoint.logs, "clicktocall.refused")
    assert line["reason"] == "user" and line["user_id"] == 424242


@pytest.mark.parametrize(
    "phone", ["100@evil", "123\r\nAction: Hangup", "*97", "call me", "12", 18305803077, None]
)
async def test_400_for_a_number_that_is_not_dialable(endpoint: Endpoint, phone: object) -> None:
    status, body = await post_click(endpoint.session, endpoint.url, token(), phone)
    assert status == 400 and body["error"] == "number"
    assert endpoint.ami.originates == []


async def test_429_within_min_interval(endpoint: Endpoint) -> None:
    assert (await post_click(endpoint.session, endpoint.url, token()))[0] == 202
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert status == 429 and body["error"] == "rate"
    assert len(endpoint.ami.originates) == 1


async def test_502_when_the_pbx_refuses(endpoint: Endpoint) -> None:
    endpoint.ami.originate_failures["Local/101@from-internal"] = "5"
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert status == 502 and body == {"error": "pbx", "detail": "your phone is busy"}


async def test_202_while_the_phone_rings_not_when_it_is_answered(endpoint: Endpoint) -> None:
    # Asterisk's verdict on the user's leg comes when the phone is answered or gives up (up
    # to the ring timeout): the browser has its 202 long before, once the Originate is queued.
    endpoint.ami.originate_delay = 20.0
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert (status, body) == (202, {"extension": "101", "number": "18305803077"})
    assert endpoint.ami.ringing == 1  # the PBX has not said yet whether the phone answered
    [line] = events(endpoint.logs, "clicktocall.originated")
    assert line["ringing"] is True


async def test_a_failure_after_the_202_is_logged(endpoint: Endpoint) -> None:
    endpoint.ami.originate_delay = 3.0  # beyond the 2 s the browser waits
    endpoint.ami.originate_failures["Local/101@from-internal"] = "3"  # rang, not answered
    status, _ = await post_click(endpoint.session, endpoint.url, token())
    assert status == 202
    await wait_for(lambda: bool(events(endpoint.logs, "clicktocall.refused")), 10.0)
    [line] = events(endpoint.logs, "clicktocall.refused")
    assert line["reason"] == "pbx" and line["late"] is True
    assert line["detail"] == "your phone rang but was not answered"
    assert line["user_id"] == USER and line["number"] == "18305803077"


async def test_502_for_a_failure_within_the_wait(endpoint: Endpoint) -> None:
    endpoint.ami.originate_delay = 0.3  # an unregistered extension fails within milliseconds
    endpoint.ami.originate_failures["Local/101@from-internal"] = "0"
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert status == 502 and body["detail"].startswith("the PBX could not place the call")
    assert endpoint.ami.ringing == 0


async def test_502_when_the_pbx_does_not_answer_the_originate(endpoint: Endpoint) -> None:
    endpoint.ami.unanswered.add("originate")
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert (status, body) == (502, {"error": "pbx", "detail": "the PBX did not answer in time"})


async def test_503_when_the_pbx_is_not_connected(endpoint: Endpoint) -> None:
    endpoint.ami.drop()
    await wait_for(lambda: not endpoint.daemon.ami_connected)
    endpoint.ami.hang()  # and stays away
    status, body = await post_click(endpoint.session, endpoint.url, token())
    assert status == 503 and body["error"] == "pbx"
    endpoint.ami.unhang()
    await wait_for(lambda: endpoint.daemon.ami_connected)
    # A click that never reached the PBX does not start min_interval.
    assert (await post_click(endpoint.session, endpoint.url, token()))[0] == 202


async def test_502_when_the_ami_user_may_not_originate(tls_files: tuple[Path, Path]) -> None:
    async for made in _endpoint(tls_files, users={DEMO_USERNAME: AmiUser(DEMO_SECRET)}):
        await wait_for(lambda: account_known(made.logs))  # noqa: B023  (awaited here)
        status, body = await post_click(made.session, made.url, token())
        assert status == 502 and body["detail"] == "the PBX refused: Permission denied"


async def test_503_then_202_once_kommo_names_the_account(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo() as kommo:
        kommo.fail_next(ACCOUNT_PATH, 503, times=1)
        config = click_config(ami, kommo, cert, key)
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                await wait_for(lambda: daemon.public_port is not None)
                connector = aiohttp.TCPConnector(ssl=client_tls(cert))
                async with aiohttp.ClientSession(connector=connector) as session:
                    url = f"https://127.0.0.1:{daemon.public_port}"
                    status, _ = await post_click(session, url, token())
                    assert status == 503
                    await wait_for(lambda: bool(events(logs, "clicktocall.account")), 10.0)
                    assert (await post_click(session, url, token()))[0] == 202


async def test_403_when_clicktocall_is_off(tls_files: tuple[Path, Path]) -> None:
    async for made in _endpoint(tls_files, clicktocall={"enabled": False}):
        status, body = await post_click(made.session, made.url, token())
        assert status == 403 and body["error"] == "disabled"


async def test_cors_preflight_for_the_allowed_origins_only(endpoint: Endpoint) -> None:
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-auth-token, content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    for origin in (PAGE_ORIGIN, endpoint.kommo.base_url):
        async with endpoint.session.options(
            f"{endpoint.url}/kommo/call", headers={"Origin": origin, **asked}
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert response.headers["Access-Control-Allow-Private-Network"] == "true"
            assert "X-Auth-Token" in response.headers["Access-Control-Allow-Headers"]
    async with endpoint.session.options(
        f"{endpoint.url}/kommo/call", headers={"Origin": "https://evil.example.com", **asked}
    ) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    async with endpoint.session.post(
        f"{endpoint.url}/kommo/call",
        json={"phone": "18305803077"},
        headers={"Origin": "https://evil.example.com", "X-Auth-Token": token()},
    ) as response:
        assert response.status == 403
    assert endpoint.ami.originates == []
    status, _ = await post_click(endpoint.session, endpoint.url, token())
    assert status == 202  # a refused origin spent no token and started no min_interval


@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics", "/callerid?number=1", "/kommo"])
async def test_everything_else_is_404(endpoint: Endpoint, path: str) -> None:
    async with endpoint.session.get(f"{endpoint.url}{path}") as response:
        assert response.status == 404


async def test_a_megabyte_body_is_refused_and_the_daemon_goes_on(endpoint: Endpoint) -> None:
    body = b'{"phone": "' + b"1" * (1024 * 1024) + b'"}'
    async with endpoint.session.post(
        f"{endpoint.url}/kommo/call",
        data=io.BytesIO(body),
        headers={"X-Auth-Token": token(), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 413
    assert (await post_click(endpoint.session, endpoint.url, token()))[0] == 202


async def test_plain_http_to_the_tls_port_gets_nothing(endpoint: Endpoint) -> None:
    port = endpoint.daemon.public_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /kommo/me HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(100), 5.0)
    assert b"200" not in data
    writer.close()
