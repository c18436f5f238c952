"""``kommo-callerid check`` against the fake AMI server and the fake Kommo, over real sockets.

``main()`` runs in a worker thread (it has its own event loop, as on the command line) while
the test's loop serves the fakes and plays traffic into the listen window.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kommo_callerid.cli import main
from kommo_callerid.commands.report import Report, colour_wanted
from kommo_callerid.sim.ami_server import DEMO_SECRET, DEMO_USERNAME, AmiUser, FakeAmiServer
from kommo_callerid.sim.kommo_app import ACCOUNT_PATH, PROBLEM_JSON, FakeKommo, demo_dataset
from kommo_callerid.sim.scenarios import CallScenarios

from support import refused_port, wait_for

NO_CALL_CLASS = AmiUser(DEMO_SECRET, read=frozenset({"system"}))
NO_WRITE_SYSTEM = AmiUser(DEMO_SECRET, write=frozenset())
LIVE_CHANNEL = {"Channel": "IAX2/carrier-1", "Uniqueid": "1700000000.1", "Context": "from-trunk"}


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(demo_dataset()) as fake:
        yield fake


def write_config(
    tmp_path: Path,
    ami_port: int,
    base_url: str,
    token: str,
    secret: str = DEMO_SECRET,
) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f"""
[ami]
port = {ami_port}
username = "{DEMO_USERNAME}"
secret = "{secret}"
connect_timeout = 3.0

[journal]
database = "{tmp_path / "journal.sqlite3"}"

[kommo]
base_url = "{base_url}"
access_token = "{token}"
timeout = 3.0
"""
    )
    path.chmod(0o600)  # it holds secrets: check would warn about a world-readable one
    return path


async def run_check(config: Path, listen: float = 0) -> int:
    return await asyncio.to_thread(main, ["check", "-c", str(config), "--listen", f"{listen:g}"])


async def check_against(
    tmp_path: Path, ami: FakeAmiServer, kommo: FakeKommo, **overrides: str
) -> int:
    values = {"base_url": kommo.base_url, "token": kommo.token} | overrides
    return await run_check(write_config(tmp_path, ami.port, **values))


def listing_requests(ami: FakeAmiServer) -> int:
    return sum(1 for action in ami.actions if action.get("action") == "CoreShowChannels")


def jwt_expiring_at(exp: int) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'exp': exp, 'sub': '1'})}.c2ln"


# ---- all well ----


async def test_all_well_exits_0_and_reports_the_contexts_in_use(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = CallScenarios()
    async with FakeAmiServer() as ami:
        config = write_config(tmp_path, ami.port, kommo.base_url, kommo.token)
        checking = asyncio.create_task(run_check(config, listen=1.5))
        await wait_for(lambda: listing_requests(ami) >= 1)
        await ami.play(scenarios.inbound("18305803077", agents=("101",)).events)
        await ami.play(scenarios.internal("101", "102").events)
        assert await checking == 0
    out = capsys.readouterr().out
    assert "OK   AMI: logged in to 127.0.0.1" in out and "Asterisk Call Manager/6.0.0" in out
    assert "OK   AMI: Filter allowed" in out
    assert "OK   AMI: read = call works" in out
    assert "from-trunk: new calls 1; inbound (matches 'from-trunk')" in out
    assert "from-internal:" in out and "not inbound" in out
    assert "OK   Kommo: the token opens account 'Demo account' (subdomain demo" in out
    assert "All checks passed." in out and "FAIL" not in out and "\033[" not in out
    assert DEMO_SECRET not in out and kommo.token not in out


async def test_a_quiet_pbx_is_a_warning_not_a_failure(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer() as ami:
        assert await check_against(tmp_path, ami, kommo) == 0
    out = capsys.readouterr().out
    assert "WARN AMI: no traffic to judge read = call by" in out
    assert "kommo-callerid check --listen 30" in out
    assert "No problems; 1 warning(s) above." in out


# ---- AMI problems ----


async def test_wrong_ami_secret(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer() as ami:
        assert await check_against(tmp_path, ami, kommo, secret="wrong-secret") == 1
    out = capsys.readouterr().out
    assert "FAIL AMI: login as 'kommo-callerid' refused (Authentication failed)" in out
    assert "fix: make [ami] username and secret" in out and "/etc/asterisk/manager.conf" in out
    assert "wrong-secret" not in out
    assert "OK   Kommo" in out  # one failure does not hide the other checks


async def test_user_without_the_call_class_while_calls_come_and_go(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    call = CallScenarios().inbound("18305803077")
    async with FakeAmiServer({DEMO_USERNAME: NO_CALL_CLASS}) as ami:
        ami.channels = [LIVE_CHANNEL]
        config = write_config(tmp_path, ami.port, kommo.base_url, kommo.token)
        checking = asyncio.create_task(run_check(config, listen=1))
        await wait_for(lambda: listing_requests(ami) >= 1)
        ami.channels.append({"Channel": "IAX2/carrier-2", "Uniqueid": "1700000000.9"})
        assert ami.emit(call.events[0]) == 0  # the user may not see it: no read = call
        assert await checking == 1
    out = capsys.readouterr().out
    assert "FAIL AMI: channels started or ended during 1 s but no call event came" in out
    assert "lacks read = call" in out
    assert "fix: add read = call to [kommo-callerid] in /etc/asterisk/manager.conf" in out
    assert 'asterisk -rx "manager reload"' in out


async def test_active_channels_without_events_only_warn(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer({DEMO_USERNAME: NO_CALL_CLASS}) as ami:
        ami.channels = [LIVE_CHANNEL]
        assert await check_against(tmp_path, ami, kommo) == 0
    out = capsys.readouterr().out
    assert "WARN AMI: 1 active channels but no call events in 0 s" in out


async def test_filter_refused(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer({DEMO_USERNAME: NO_WRITE_SYSTEM}) as ami:
        assert await check_against(tmp_path, ami, kommo) == 1
    out = capsys.readouterr().out
    assert "FAIL AMI: Filter refused (Permission denied)" in out
    assert "fix: add write = system to [kommo-callerid] in /etc/asterisk/manager.conf" in out
    assert "(CoreShowChannels: Permission denied)" in out


async def test_an_unanswered_filter_is_a_warning_not_a_failure(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13 point 2's sibling: the daemon survives an unanswered Filter (it reconnects
    and filters events itself), so check must not call it a broken link."""
    async with FakeAmiServer() as ami:
        ami.unanswered.add("filter")
        assert await check_against(tmp_path, ami, kommo) == 0
    out = capsys.readouterr().out
    assert "WARN AMI: no answer to Filter within" in out
    assert "FAIL" not in out


async def test_an_ami_1x_pbx_is_a_warning_naming_what_it_lacks(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer(version="1.3") as ami:
        assert await check_against(tmp_path, ami, kommo) == 0
    out = capsys.readouterr().out
    assert "WARN AMI: AMI 1.3 is Asterisk 11 or older" in out
    assert "the call journal is off" in out


async def test_nothing_listening_on_the_ami_port(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    with refused_port() as port:
        config = write_config(tmp_path, port, kommo.base_url, kommo.token)
        assert await run_check(config) == 1
    out = capsys.readouterr().out
    assert "FAIL AMI: cannot connect to 127.0.0.1:" in out
    assert "fix: check [ami] host/port/tls" in out and "enabled = yes" in out


# ---- Kommo problems ----


def problem(status: int, detail: str) -> str:
    return json.dumps({"title": "x", "status": status, "detail": detail})


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (401, problem(401, "Token has expired"), PROBLEM_JSON, "the access token expired"),
        (403, problem(403, "Account is blocked"), PROBLEM_JSON, "access forbidden (HTTP 403"),
        (402, problem(402, "Payment Required"), PROBLEM_JSON, "the account is not paid"),
        (429, problem(429, "Too Many Requests"), PROBLEM_JSON, "rate-limited (HTTP 429"),
        (404, "<html>no</html>", "text/html", "is not a Kommo API (HTTP 404"),
        (200, "<html>login</html>", "text/html", "is not a Kommo API (HTTP 200"),
        (502, "", "text/plain", "server error (HTTP 502"),
    ],
)
async def test_kommo_answers_are_explained(
    tmp_path: Path,
    kommo: FakeKommo,
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: str,
    content_type: str,
    expected: str,
) -> None:
    kommo.fail_next(ACCOUNT_PATH, status, body, content_type=content_type)
    async with FakeAmiServer() as ami:
        assert await check_against(tmp_path, ami, kommo) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [n for n, line in enumerate(lines) if line.startswith("  FAIL Kommo: ")]
    assert len(failed) == 1 and expected in lines[failed[0]]
    assert lines[failed[0] + 1].strip().startswith("fix: ")


async def test_kommo_token_revoked(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer() as ami:
        assert await check_against(tmp_path, ami, kommo, token="revoked-token") == 1
    out = capsys.readouterr().out
    assert (
        "FAIL Kommo: the access token is refused (HTTP 401; Kommo says: missing or invalid" in out
    )
    assert "revoked, mistyped" in out and "[kommo] access_token" in out
    assert "revoked-token" not in out


async def test_kommo_token_expired_by_its_own_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = jwt_expiring_at(1_577_836_800)  # 2020-01-01
    async with FakeKommo(demo_dataset(), token=token) as kommo, FakeAmiServer() as ami:
        kommo.fail_next(ACCOUNT_PATH, 401, problem(401, "Unauthorized"), content_type=PROBLEM_JSON)
        assert await check_against(tmp_path, ami, kommo) == 1
    out = capsys.readouterr().out
    assert "FAIL Kommo: the access token expired on 2020-01-01" in out
    assert token not in out


async def test_kommo_host_that_refuses_connections(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer() as ami:
        with refused_port() as port:
            url = f"http://127.0.0.1:{port}"
            assert await check_against(tmp_path, ami, kommo, base_url=url) == 1
    out = capsys.readouterr().out
    assert "refused the connection: wrong host or port" in out
    assert "fix: set [kommo] base_url to https://<subdomain>.kommo.com" in out


async def test_kommo_host_that_does_not_resolve(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeAmiServer() as ami:
        url = "https://no-such-subdomain.invalid"
        assert await check_against(tmp_path, ami, kommo, base_url=url) == 1
    out = capsys.readouterr().out
    assert "FAIL Kommo: the host name no-such-subdomain.invalid does not resolve" in out


# ---- the report itself ----


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_wanted(Terminal()) and not colour_wanted(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(Terminal())


def test_findings_are_coloured_by_status() -> None:
    out = Terminal()
    report = Report(out, colour=True)
    report.ok("fine")
    report.warn("hmm")
    report.fail("broken", "mend it")
    text = out.getvalue()
    assert "\033[32mOK  \033[0m fine" in text and "\033[33mWARN\033[0m hmm" in text
    assert "\033[31mFAIL\033[0m broken" in text and "fix: mend it" in text
    assert not report.all_well


def test_listen_must_be_a_non_negative_number() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--listen", "-1"])
    assert info.value.code == 2


async def test_oauth_without_tokens_says_how_to_authorise(
    tmp_path: Path, kommo: FakeKommo, capsys: pytest.CaptureFixture[str]
) -> None:
    with refused_port() as port:
        config = write_config(tmp_path, port, kommo.base_url, kommo.token)
        text = config.read_text().replace(
            f'access_token = "{kommo.token}"',
            'client_id = "id"\nclient_secret = "cs"\nredirect_uri = "https://pbx.example/cb"\n'
            f'token_file = "{tmp_path / "tokens.json"}"',
        )
        config.write_text(text)
        assert await run_check(config) == 1
    out = capsys.readouterr().out
    assert "FAIL Kommo OAuth: no OAuth tokens yet" in out
    assert "kommo-callerid authorize CODE" in out
