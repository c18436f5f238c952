"""What the OAuth tests share: a settable wall clock, an OAuth config for the fake Kommo, a
client built from them."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from kommo_callerid.core.config import CacheConfig, KommoConfig
from kommo_callerid.kommo.client import KommoClient
from kommo_callerid.sim.kommo_app import FakeKommo


class WallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def oauth_config(
    fake: FakeKommo, token_file: Path, refresh_token: str | None = None
) -> KommoConfig:
    assert fake.oauth is not None
    return KommoConfig(
        base_url=fake.base_url,
        client_id=fake.oauth.client_id,
        client_secret=SecretStr(fake.oauth.client_secret),
        redirect_uri=fake.oauth.redirect_uri,
        refresh_token=SecretStr(refresh_token or fake.oauth.refresh_token),
        token_file=token_file,
        rate_limit=100,
    )


def client(config: KommoConfig, wall: WallClock | None = None) -> KommoClient:
    return KommoClient(config, CacheConfig(), wall_clock=wall or WallClock())
