"""A password inside a URL never reaches a message: a Redis password with ``@`` in it, and a
``base_url`` that carries ``user:password@`` (issue 18, point 16)."""

from __future__ import annotations

import pytest

from kommo_callerid.cluster.link import ClusterLink, ClusterStartError
from kommo_callerid.core.config import ClusterConfig, url_for_messages
from kommo_callerid.core.config_load import ConfigError, from_mapping

from support import refused_port

SECRET_PIECES = ("s3cret", "PW", "hunter2", "alice")


def config_error(**sections: dict[str, str]) -> str:
    data = {
        "ami": {"secret": "a"},
        "kommo": {"base_url": "https://acme.kommo.com", "access_token": "t"},
    }
    with pytest.raises(ConfigError) as info:
        from_mapping({**data, **sections})
    return str(info.value)


def assert_no_secret(text: str) -> None:
    for piece in SECRET_PIECES:
        assert piece not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@PW@10.0.0.9:6379/0", "redis://10.0.0.9:6379/0"),
        ("rediss://alice:s3cret@PW@redis.lan/1", "rediss://redis.lan/1"),
        ("redis://:s3/cret?@PW@10.0.0.9", "redis://10.0.0.9"),  # / and ? unencoded
        ("redis://10.0.0.9:6379", "redis://10.0.0.9:6379"),
        ("https://alice:hunter2@acme.kommo.com/x", "https://acme.kommo.com/x"),
    ],
)
def test_url_for_messages_drops_all_of_the_userinfo(url: str, shown: str) -> None:
    assert url_for_messages(url) == shown


def test_a_bad_redis_url_with_an_at_in_its_password_is_not_echoed() -> None:
    message = config_error(cluster={"redis_url": "http://:s3cret@PW@10.0.0.9:6379"})
    assert "must be a redis://" in message and "10.0.0.9" in message
    assert_no_secret(message)


async def test_an_unreachable_redis_is_named_without_the_password() -> None:
    with refused_port() as port:
        link = ClusterLink(ClusterConfig(redis_url=f"redis://:s3cret@PW@127.0.0.1:{port}/0"))
        try:
            with pytest.raises(ClusterStartError) as info:
                await link.connect()
        finally:
            await link.close()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    "base_url",
    [
        "http://alice:hunter2@acme.kommo.com",  # plain http to a remote host
        "ftp://alice:hunter2@acme.kommo.com",  # not http at all
        "https://alice:hunter2@acme.kommo.com",  # well formed, but a password in it
        "https://alice:hunter2@[acme.kommo.com",  # not even a URL
    ],
)
def test_a_base_url_with_userinfo_is_refused_without_echoing_it(base_url: str) -> None:
    message = config_error(kommo={"base_url": base_url, "access_token": "t"})
    assert "[kommo] base_url" in message
    assert_no_secret(message)
