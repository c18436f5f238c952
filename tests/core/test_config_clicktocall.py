"""``[public]`` and ``[clicktocall]``: what an operator may and may not write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import ConfigError, from_mapping, load_config

KOMMO = {
    "base_url": "https://acme.kommo.com",
    "client_id": "cid",
    "client_secret": "csecret",
    "redirect_uri": "https://pbx.example.com/oauth",
}


def build(**sections: dict[str, Any]) -> Config:
    return from_mapping({"ami": {"secret": "s"}, "kommo": KOMMO, **sections})


def test_defaults_are_the_contracts() -> None:
    config = build()
    assert config.public.listen == "" and config.public.origins == ()
    c2c = config.clicktocall
    assert not c2c.enabled
    assert c2c.channel == "Local/{extension}@from-internal"
    assert c2c.context == "from-internal"
    assert c2c.caller_id == "{name} <{number}>"
    assert (c2c.timeout, c2c.min_interval, c2c.users) == (30.0, 3.0, {})


def test_enabled_with_everything() -> None:
    config = build(
        public={"listen": "127.0.0.1:8443", "origins": ["https://Other.example.com:443"]},
        clicktocall={"enabled": True, "users": {"8375357": "north/101"}},
    )
    assert config.clicktocall.users == {8375357: "north/101"}
    assert config.public.origins == ("https://other.example.com",)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"clicktocall": {"enabled": True}}, "needs \\[public\\] listen"),
        ({"public": {"listen": "0.0.0.0:8443"}}, "tls_cert and tls_key"),
        ({"public": {"listen": "127.0.0.1:1", "tls_cert": "/c"}}, "go together"),
        ({"public": {"origins": ["kommo.com"]}}, "scheme://host"),
        ({"public": {"listen": "127.0.0.1:8899"}, "http": {"listen": "127.0.0.1:8899"}}, "share"),
        ({"clicktocall": {"channel": "Local/101@x"}}, "must contain \\{extension\\}"),
        ({"clicktocall": {"channel": "Local/{ext}@x"}}, "only the placeholder"),
        ({"clicktocall": {"caller_id": "{name}\r\nAction: Hangup"}}, "line breaks"),
        ({"clicktocall": {"context": "a\nb"}}, "line breaks"),
        ({"clicktocall": {"caller_id": "{who}"}}, "placeholders"),
        ({"clicktocall": {"dial_rules": [["(", "x"]]}}, "dial rule"),
        ({"clicktocall": {"dial_rules": [["a", "\\2"]]}}, "dial rule"),
        ({"clicktocall": {"users": {"7": "101@evil"}}}, "not an extension"),
        ({"clicktocall": {"min_interval": -1}}, "min_interval"),
    ],
)
def test_mistakes(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**sections)


def test_needs_the_client_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[ami]\nsecret = "s"\n[kommo]\nbase_url = "https://acme.kommo.com"\naccess_token = "t"\n'
        '[public]\nlisten = "127.0.0.1:8443"\n[clicktocall]\nenabled = true\n'
    )
    with pytest.raises(ConfigError, match="client_id and client_secret"):
        load_config(path)


def test_tls_key_from_a_credential_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "public_tls_key").write_text("-----BEGIN PRIVATE KEY-----\nabc\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = build(public={"listen": "0.0.0.0:8443", "tls_cert": "/etc/ssl/c.pem"})
    assert config.public.tls_key == str(tmp_path / "public_tls_key")
