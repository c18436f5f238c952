"""The OAuth token file as operators meet it: root-run one-shot commands keep its owner,
an unusable file or lock is a sentence with the fix, and a full disk does not stop Kommo
traffic. Real files, real sockets; only the disk-full error is injected (os.replace)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from oauth_support import WallClock, client, oauth_config
from pydantic import SecretStr
from structlog.testing import capture_logs

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.core.models import KommoAuthError, NotifyOutcome
from kommo_callerid.daemon.app import EXIT_CONFIG, Daemon
from kommo_callerid.kommo import tokens as kommo_tokens
from kommo_callerid.kommo.auth import SAVE_RETRY, TokenFileUnusable
from kommo_callerid.kommo.client import KommoClient, KommoHealth
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import TOKEN_PATH, FakeKommo, FakeOAuth

from support import events, make_config, run_as_nobody

JOHN = "18305803077"
OTHER_UID, OTHER_GID = 4242, 4343
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the operator's sudo")


@pytest.fixture
async def fake() -> AsyncIterator[FakeKommo]:
    async with FakeKommo(oauth=FakeOAuth()) as server:
        yield server


def saved(token_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(token_file.read_text())
    return data


def owner(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_uid, found.st_gid


# -- point 3: root keeps the service's ownership -------------------------------------------


@as_root
async def test_root_replacing_the_token_file_keeps_its_owner_and_group(
    fake: FakeKommo, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    token_file = state / "tokens.json"
    async with client(oauth_config(fake, token_file)) as first:  # the service's first save
        await first.lookup(JOHN)
    for path in (state, token_file, state / "tokens.json.lock"):
        os.chown(path, OTHER_UID, OTHER_GID)  # as if written by the DynamicUser service
    before = saved(token_file)
    fake.expire_token()
    async with client(oauth_config(fake, token_file)) as root_run:  # `sudo kommo-callerid ...`
        assert await root_run.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    assert saved(token_file) != before  # really replaced
    assert owner(token_file) == (OTHER_UID, OTHER_GID)
    assert owner(state / "tokens.json.lock") == (OTHER_UID, OTHER_GID)
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"


@as_root
async def test_root_creating_the_files_gives_them_the_directory_s_owner(
    fake: FakeKommo, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, OTHER_UID, OTHER_GID)  # the StateDirectory systemd made for the service
    token_file = state / "tokens.json"
    async with client(oauth_config(fake, token_file)) as root_run:
        await root_run.lookup(JOHN)
    assert owner(token_file) == (OTHER_UID, OTHER_GID)
    assert owner(state / "tokens.json.lock") == (OTHER_UID, OTHER_GID)


@as_root
def test_the_service_user_meets_a_root_only_token_file_with_the_fix(tmp_path: Path) -> None:
    """The trial's failure as the service meets it (a forked child drops to nobody): a
    TokenFileUnusable naming the fix, which the daemon turns into exit 3 or a 503."""
    top = Path(tempfile.mkdtemp(prefix="kcid-"))  # /tmp/pytest-of-root is root-only
    try:
        top.chmod(0o755)
        token_file = top / "tokens.json"
        token_file.write_text('{"access_token": "a", "refresh_token": "r", "expires_at": 0}')
        token_file.chmod(0o600)  # root rewrote it: root:root 0600
        verdict = _as_nobody(token_file)
    finally:
        shutil.rmtree(top)
    assert verdict.startswith("TokenFileUnusable: "), verdict
    assert "Permission denied" in verdict and "systemctl restart kommo-callerid" in verdict


def _as_nobody(token_file: Path) -> str:
    """Load credentials in a child process running as nobody; what it raised, as text."""
    config = KommoConfig(
        base_url="http://127.0.0.1:9",
        client_id="i",
        client_secret=SecretStr("s"),
        redirect_uri="https://r.example",
        token_file=token_file,
    )
    return run_as_nobody(lambda: asyncio.run(_ensure(config)))


async def _ensure(config: KommoConfig) -> None:
    async with KommoClient(config, CacheConfig()) as kommo:
        await kommo.ensure_credentials()


# -- point 7: an unusable lock -------------------------------------------------------------


async def test_an_unusable_lock_stops_the_daemon_at_start_with_a_sentence(
    fake: FakeKommo, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens.json"
    (tmp_path / "tokens.json.lock").mkdir()  # not a file: cannot be opened for locking
    async with FakeAmiServer() as ami:
        config = make_config(ami, fake).model_copy(update={"kommo": oauth_config(fake, token_file)})
        with capture_logs() as logs:
            assert await Daemon(config).serve() == EXIT_CONFIG
    [line] = events(logs, "kommo.error")
    assert "tokens.json.lock" in line["detail"] and "chown" in line["detail"]


async def test_an_unusable_lock_is_a_kommo_auth_error_for_one_shot_commands(
    fake: FakeKommo, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens.json"
    (tmp_path / "tokens.json.lock").symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW refuses
    async with client(oauth_config(fake, token_file)) as kommo:
        with pytest.raises(TokenFileUnusable):
            await kommo.ensure_credentials()
        assert kommo.health is KommoHealth.TOKEN_UNREADABLE


# -- point 9: disk full during a refresh ---------------------------------------------------


async def test_a_full_disk_does_not_stop_kommo_traffic(
    fake: FakeKommo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "tokens.json"
    wall = WallClock()
    real_replace = os.replace
    full = True

    def replace(src: Any, dst: Any) -> None:
        if full:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    async with client(oauth_config(fake, token_file), wall) as kommo:
        await kommo.lookup(JOHN)
        monkeypatch.setattr(kommo_tokens.os, "replace", replace)
        fake.expire_token()  # the refresh below spends the refresh token in the file
        with capture_logs() as logs:
            for n in range(30):  # the trial's 30 lines in 20 s for one call
                assert await kommo.notify(JOHN, [n + 1], within=5) is NotifyOutcome.SENT
                wall.now += 0.7
        errors = events(logs, "kommo.error")
        assert len(errors) == 1 and "No space left" in errors[0]["detail"]
        assert fake.oauth is not None and fake.oauth.refreshes == 2  # the new pair was kept
        assert saved(token_file)["access_token"] != fake.token  # still the spent pair on disk

        full = False  # the operator freed the disk
        wall.now += SAVE_RETRY
        with capture_logs() as logs:
            await kommo.ensure_credentials()
        assert saved(token_file)["access_token"] == fake.token
        assert saved(token_file)["refresh_token"] == fake.oauth.refresh_token
        assert events(logs, "kommo.token_refreshed")
    assert [p.name for p in os.scandir(tmp_path) if p.name.startswith(".")] == []


async def test_a_pair_still_unsaved_at_close_is_said_to_be_lost(
    fake: FakeKommo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "tokens.json"

    def replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    with capture_logs() as logs:
        async with client(oauth_config(fake, token_file)) as kommo:
            monkeypatch.setattr(kommo_tokens.os, "replace", replace)
            assert await kommo.notify(JOHN, [1], within=5) is NotifyOutcome.SENT
    assert "lost" in events(logs, "kommo.error")[-1]["detail"]
    assert fake.requests_to(TOKEN_PATH) == 1


async def test_a_token_file_that_turns_unreadable_is_reported_and_recovers(
    fake: FakeKommo, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens.json"
    async with client(oauth_config(fake, token_file)) as kommo:
        await kommo.lookup(JOHN)
        good = token_file.read_bytes()
        token_file.unlink()
        token_file.mkdir()  # unreadable even for root
        fake.expire_token()
        with capture_logs() as logs, pytest.raises(KommoAuthError):
            await kommo.lookup("14155550199")
        assert kommo.health is KommoHealth.TOKEN_UNREADABLE
        [line] = events(logs, "kommo.error")
        assert line["log_level"] == "error"
        assert "cannot read" in line["detail"] and "systemctl restart" in line["detail"]

        token_file.rmdir()
        token_file.write_bytes(good)  # fixed: the daemon picks the file up again
        await kommo.ensure_credentials()
        assert kommo.health is KommoHealth.OK
        assert (await kommo.lookup("14155550199")).entity is not None
