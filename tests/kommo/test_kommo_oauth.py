"""OAuth against the fake Kommo over real sockets: single-use refresh tokens rotated, saved
atomically before use, refreshed once for many 401s, and never logged."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from oauth_support import WallClock, client, oauth_config
from structlog.testing import capture_logs

from kommo_callerid.core.models import KommoAuthError, NotifyOutcome
from kommo_callerid.daemon.app import EXIT_CONFIG, Daemon
from kommo_callerid.kommo import tokens as kommo_tokens
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import EVENTS_PATH, TOKEN_PATH, FakeKommo, FakeOAuth

from support import make_config

JOHN = "18305803077"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(oauth=FakeOAuth()) as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tokens.json"


def saved(token_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(token_file.read_text())
    return data


async def test_first_use_refreshes_and_saves_the_pair_with_mode_0600(
    fake: FakeKommo, token_file: Path
) -> None:
    first_refresh = fake.oauth.refresh_token if fake.oauth else ""
    with capture_logs() as logs:
        async with client(oauth_config(fake, token_file)) as kommo:
            assert await kommo.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    data = saved(token_file)
    assert data["access_token"] == fake.token
    assert fake.oauth is not None and data["refresh_token"] == fake.oauth.refresh_token
    assert data["refresh_token"] != first_refresh
    [refreshed] = [line for line in logs if line["event"] == "kommo.token_refreshed"]
    assert refreshed["expires_in"] == 86_400
    assert fake.token not in repr(logs) and data["refresh_token"] not in repr(logs)


async def test_a_401_makes_one_refresh_and_the_call_is_retried(
    fake: FakeKommo, token_file: Path
) -> None:
    async with client(oauth_config(fake, token_file)) as kommo:
        await kommo.lookup(JOHN)
        fake.expire_token()  # Kommo stops accepting the access token
        assert await kommo.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    assert fake.oauth is not None and fake.oauth.refreshes == 2
    assert [r.status for r in fake.requests if r.path == EVENTS_PATH] == [401, 200]
    assert saved(token_file)["access_token"] == fake.token


async def test_concurrent_401s_make_one_refresh(fake: FakeKommo, token_file: Path) -> None:
    async with client(oauth_config(fake, token_file)) as kommo:
        await kommo.lookup(JOHN)
        fake.expire_token()
        outcomes = await asyncio.gather(*(kommo.notify(JOHN, [n + 1], within=5) for n in range(20)))
    assert set(outcomes) == {NotifyOutcome.SENT}
    assert fake.oauth is not None and fake.oauth.refreshes == 2
    assert fake.requests_to(TOKEN_PATH) == 2


async def test_refreshes_ahead_of_expiry_without_waiting_for_a_401(
    fake: FakeKommo, token_file: Path
) -> None:
    wall = WallClock()
    async with client(oauth_config(fake, token_file), wall) as kommo:
        await kommo.lookup(JOHN)
        wall.now += 86_400 - 120  # two minutes before the day is over
        await kommo.ensure_credentials()  # what the daemon does every minute
        assert await kommo.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    assert fake.oauth is not None and fake.oauth.refreshes == 2
    assert all(record.status != 401 for record in fake.requests)


async def test_a_short_lived_token_is_refreshed_once_per_lifetime(token_file: Path) -> None:
    # Issue 18, point 14: a fixed 300 s margin made a 60 s token due at once, so every
    # request refreshed it; the margin is now a quarter of the lifetime.
    wall = WallClock()
    async with (
        FakeKommo(oauth=FakeOAuth(expires_in=60)) as fake,
        client(oauth_config(fake, token_file), wall) as kommo,
    ):
        for second in range(0, 125, 5):
            wall.now += 5
            assert await kommo.notify(JOHN, [second + 1], within=5) is NotifyOutcome.SENT
    # the first pair, then one a lifetime (each refreshed 15 s early): 125 s, 3 pairs
    assert fake.oauth is not None and fake.oauth.refreshes == 3
    assert saved(token_file)["lifetime"] == 60


async def test_a_second_start_uses_the_saved_pair_not_the_stale_config_token(
    fake: FakeKommo, token_file: Path
) -> None:
    config = oauth_config(fake, token_file)  # its refresh_token is used up by the first start
    async with client(config) as first:
        await first.lookup(JOHN)
    wall = WallClock()
    async with client(config, wall) as second:
        await second.ensure_credentials()
        assert await second.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
        wall.now += 86_400  # and its expiry refresh uses the file's refresh token
        assert await second.notify(JOHN, [2], within=5) is NotifyOutcome.SENT
    assert fake.oauth is not None and fake.oauth.refreshes == 2
    assert fake.requests_to(TOKEN_PATH) == 2  # no refused refresh with the stale token


async def test_the_new_access_token_is_never_used_before_it_is_on_disk(
    fake: FakeKommo, token_file: Path
) -> None:
    unsaved_uses: list[str] = []

    def check_disk(token: str) -> None:
        if not token_file.exists() or saved(token_file)["access_token"] != token:
            unsaved_uses.append(token)

    fake.on_authorised = check_disk
    async with client(oauth_config(fake, token_file)) as kommo:
        for round_ in range(3):
            fake.expire_token()
            assert await kommo.notify(JOHN, [round_ + 1], within=5) is NotifyOutcome.SENT
    assert fake.oauth is not None and fake.oauth.refreshes == 3
    assert unsaved_uses == []


async def test_a_save_hiccup_is_retried_at_once_and_never_burns_the_pair(
    fake: FakeKommo, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing rename between the refresh and the save: the old file stays whole, the save
    is tried again at once, the new access token is not used before it is on disk, and the
    new refresh token is not lost (no second refresh)."""
    async with client(oauth_config(fake, token_file)) as kommo:
        await kommo.lookup(JOHN)
        before = saved(token_file)
        real_replace = os.replace
        failures: list[str] = []

        def replace_failing_once(src: Any, dst: Any) -> None:
            if not failures:
                failures.append(str(dst))
                raise OSError(28, "No space left on device")
            real_replace(src, dst)

        monkeypatch.setattr(kommo_tokens.os, "replace", replace_failing_once)
        unsaved_uses: list[str] = []
        fake.on_authorised = lambda token: (
            None if saved(token_file)["access_token"] == token else unsaved_uses.append(token)
        )
        fake.expire_token()
        with capture_logs() as logs:
            assert await kommo.notify(JOHN, [1], within=10) is NotifyOutcome.SENT
    assert failures == [str(token_file)]
    assert unsaved_uses == []
    assert fake.oauth is not None and fake.oauth.refreshes == 2  # not 3: the pair was kept
    assert saved(token_file)["refresh_token"] == fake.oauth.refresh_token
    assert before != saved(token_file)
    assert [line for line in logs if line["event"] == "kommo.error"] == []
    assert [p.name for p in token_file.parent.iterdir() if p.name.startswith(".")] == []


async def test_a_rejected_refresh_token_is_an_error_not_a_loop(
    fake: FakeKommo, token_file: Path
) -> None:
    config = oauth_config(fake, token_file, refresh_token="revoked-long-ago")
    with capture_logs() as logs:
        async with client(config) as kommo:
            with pytest.raises(KommoAuthError) as raised:
                await kommo.ensure_credentials()
            assert await kommo.notify(JOHN, [1], within=5) is NotifyOutcome.REJECTED
            with pytest.raises(KommoAuthError):
                await kommo.lookup(JOHN)
    assert "kommo-callerid authorize" in raised.value.detail
    assert fake.requests_to(TOKEN_PATH) == 1  # asked once, then no more hammering
    assert "revoked-long-ago" not in repr(logs)
    assert fake.oauth is not None and fake.oauth.client_secret not in repr(logs)


async def test_the_daemon_exits_3_when_kommo_refuses_the_refresh_token(
    fake: FakeKommo, token_file: Path
) -> None:
    async with FakeAmiServer() as ami:
        base = make_config(ami, fake)
        kommo = oauth_config(fake, token_file, refresh_token="revoked-long-ago")
        config = base.model_copy(update={"kommo": kommo})
        assert await Daemon(config).serve() == EXIT_CONFIG
    assert ami.logins == 0  # refused before the AMI was even touched


async def test_two_processes_sharing_the_token_file_refresh_once(
    fake: FakeKommo, token_file: Path
) -> None:
    config = oauth_config(fake, token_file)
    async with client(config) as first, client(config) as second:
        await first.lookup(JOHN)
        await second.lookup(JOHN)  # loads the pair the first one saved
        fake.expire_token()
        outcomes = await asyncio.gather(
            first.notify(JOHN, [1], within=5), second.notify(JOHN, [2], within=5)
        )
    assert set(outcomes) == {NotifyOutcome.SENT}
    assert fake.oauth is not None and fake.oauth.refreshes == 2


def test_authorize_command_trades_the_code_and_the_daemon_can_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kommo_callerid.cli import main

    async def scenario() -> tuple[int, int]:
        oauth = FakeOAuth(codes={"def50200-code"})
        async with FakeKommo(oauth=oauth) as fake:
            token_file = tmp_path / "tokens.json"
            cfg = tmp_path / "config.toml"
            cfg.write_text(
                f'[ami]\nsecret = "x"\n[kommo]\nbase_url = "{fake.base_url}"\n'
                f'client_id = "{oauth.client_id}"\nclient_secret = "{oauth.client_secret}"\n'
                f'redirect_uri = "{oauth.redirect_uri}"\ntoken_file = "{token_file}"\n'
            )
            args = ["authorize", "def50200-code", "-c", str(cfg)]
            first = await asyncio.to_thread(main, args)
            again = await asyncio.to_thread(main, args)  # a code works once
            assert saved(token_file)["access_token"] == fake.token
            return first, again

    assert asyncio.run(scenario()) == (0, 1)
    captured = capsys.readouterr()
    assert "Tokens saved to" in captured.out
    assert "authorisation failed" in captured.err and "def50200-code" not in captured.err
