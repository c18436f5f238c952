"""The contract's answers for ``/recordings/<token>``, over real TLS sockets: 200, 206 and
HEAD for a good link; 403 for a changed, foreign or pre-rotation link; 410 once expired;
404 for every traversal attempt (``..``, ``%2e%2e``, ``%2f``, absolute paths, NUL), for
symlinks leading out of ``directory`` and for a file that is gone. A hypothesis property
feeds random paths and signed claims, and no byte from outside ``directory`` is ever served.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recordings_site import Clock, TlsRecordingSite, lay_out, self_signed, tls_site

from kommo_callerid.core.config import RecordingsConfig
from kommo_callerid.recordings.token import Claim, sign

KEY = b"k" * 32
SECRET = b"TOP-SECRET-OUTSIDE-THE-MONITOR-DIRECTORY"
WHEN = datetime(2024, 1, 2, 10, 15, 0)
UID = "1704190500.10"
AUDIO = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """monitor/ with one recording, a symlink leading out, a day folder leading out."""
    root = tmp_path_factory.mktemp("recordings")
    monitor, outside = root / "monitor", root / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(SECRET)
    lay_out(monitor, UID, WHEN, AUDIO)
    inside = lay_out(monitor, "1704190500.11", WHEN, b"")
    inside.unlink()
    inside.symlink_to(outside / "secret.wav")  # in-...-1704190500.11.wav -> outside
    (monitor / "2024" / "01" / "03").symlink_to(outside)  # a day folder leading out
    (outside / "in-1-2-20240103-000000-1704240000.1.wav").write_bytes(SECRET)
    (monitor / "2024" / "01" / "02" / "notes-x-1704190500.12.txt").write_bytes(b"not audio")
    return root


@pytest.fixture(scope="module")
def site(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRecordingSite]:
    certs = self_signed(tmp_path_factory.mktemp("tls"))
    config = RecordingsConfig(directory=tree / "monitor")
    with tls_site(config, KEY, certs, Clock(1_704_200_000.0)) as running:
        yield running


DAY = WHEN.date()


def link(uniqueid: str = UID, day: date = DAY, expires: int = 0, key: bytes = KEY) -> str:
    return "/recordings/" + sign(key, Claim(uniqueid, day, expires))


def test_a_good_link_serves_the_file_with_its_audio_type(site: TlsRecordingSite) -> None:
    status, headers, body = site.request("GET", link())
    assert (status, headers["content-type"], body) == (200, "audio/wav", AUDIO)
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_file_is_sent_once_with_no_server_error(
    site: TlsRecordingSite, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler prepares the response (the download slot is held while it streams);
    aiohttp's second prepare must not open and send the file again."""
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        assert site.request("GET", link())[0] == 200
        assert site.request("GET", link(), {"Range": "bytes=0-9"})[0] == 206
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")] == []


def test_head_answers_as_get_without_a_body(site: TlsRecordingSite) -> None:
    status, headers, body = site.request("HEAD", link())
    assert (status, int(headers["content-length"]), body) == (200, len(AUDIO), b"")


def test_a_range_is_a_206_with_just_those_bytes(site: TlsRecordingSite) -> None:
    status, headers, body = site.request("GET", link(), {"Range": "bytes=1000-1999"})
    assert (status, body) == (206, AUDIO[1000:2000])
    assert headers["content-range"] == f"bytes 1000-1999/{len(AUDIO)}"
    status, _, body = site.request("GET", link(), {"Range": "bytes=-10"})
    assert (status, body) == (206, AUDIO[-10:])


def test_a_conditional_request_is_answered_by_aiohttp(site: TlsRecordingSite) -> None:
    _, headers, _ = site.request("HEAD", link())
    status, _, body = site.request("GET", link(), {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")


def test_a_changed_link_is_403(site: TlsRecordingSite) -> None:
    good = link()
    payload, _, signature = good.removeprefix("/recordings/").partition(".")
    other = link("1704190500.99").removeprefix("/recordings/").partition(".")[0]
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for token in (f"{other}.{signature}", f"{flipped}.{signature}", f"{payload}.{'A' * 43}"):
        status, _, body = site.request("GET", f"/recordings/{token}")
        assert (status, body.count(AUDIO[:64])) == (403, 0), token


def test_a_foreign_link_is_403_and_a_rotated_key_kills_old_links(
    site: TlsRecordingSite,
) -> None:
    assert site.request("GET", link(key=b"f" * 32))[0] == 403
    old = link()
    assert site.server is not None
    site.server.reconfigure(site.config, b"n" * 32)
    try:
        assert site.request("GET", old)[0] == 403
        assert site.request("GET", link(key=b"n" * 32))[0] == 200
    finally:
        site.server.reconfigure(site.config, KEY)


def test_an_expired_link_is_410_and_a_live_one_serves(site: TlsRecordingSite) -> None:
    now = int(site.clock.now)
    assert site.request("GET", link(expires=now))[0] == 410
    assert site.request("GET", link(expires=now - 86_400))[0] == 410
    assert site.request("GET", link(expires=now + 60))[0] == 200


TRAVERSALS = [
    "/recordings/..",
    "/recordings/../outside/secret.wav",
    "/recordings/../../../../etc/passwd",
    "/recordings/%2e%2e/outside/secret.wav",
    "/recordings/%2e%2e%2foutside%2fsecret.wav",
    "/recordings/..%2f..%2f..%2fetc%2fpasswd",
    "/recordings/%2fetc%2fpasswd",
    "/recordings//etc/passwd",
    "/recordings/2024/01/02/in-5551000-18305803077-20240102-101500-1704190500.10.wav",
    "/recordings/2024/01/03/in-1-2-20240103-000000-1704240000.1.wav",
    "/recordings/secret.wav%00.wav",
    "/recordings/%00",
    "/recordings/",
    "/recordings",
    "/recordings/?list=1",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_a_path_is_never_a_link_404(site: TlsRecordingSite, path: str) -> None:
    status, _, body = site.request("GET", path)
    assert status == 404
    assert SECRET not in body and AUDIO[:64] not in body


def test_a_symlink_leading_out_is_404_even_when_signed(site: TlsRecordingSite) -> None:
    assert site.request("GET", link("1704190500.11"))[0] == 404  # the file is a symlink out
    day = date(2024, 1, 3)
    assert site.request("GET", link("1704240000.1", day))[0] == 404  # the day folder is one


def test_a_good_link_to_a_missing_or_non_audio_file_is_404(site: TlsRecordingSite) -> None:
    assert site.request("GET", link("1704190500.77"))[0] == 404
    assert site.request("GET", link("1704190500.12"))[0] == 404  # a .txt under the pattern
    assert site.request("GET", link(day=date(2024, 2, 2)))[0] == 404


def test_refusals_are_counted_by_reason(site: TlsRecordingSite) -> None:
    assert site.server is not None
    before = dict(site.server.stats.refused)
    site.request("GET", link(key=b"f" * 32))
    site.request("GET", "/recordings/..%2f")
    after = site.server.stats.refused
    assert after["signature"] == before.get("signature", 0) + 1
    assert after["path"] == before.get("path", 0) + 1


PATH_ALPHABET = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "%2e",
        "%2f",
        "%2F",
        "%00",
        "%5c",
        "\\",
        "~",
        "secret.wav",
        "outside",
        "etc",
        "passwd",
        "2024",
        "01",
        "03",
        "in-",
        "1704190500.11",
        "*",
        "?",
        "[",
        "%",
        "A",
        "_",
        "-",
        "=",
        "monitor",
        "%252e",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(PATH_ALPHABET, max_size=12))
def test_property_random_paths_never_serve_a_byte_from_outside(
    site: TlsRecordingSite, parts: list[str]
) -> None:
    status, _, body = site.request("GET", "/recordings/" + "".join(parts))
    assert status in (400, 403, 404)
    assert SECRET not in body


UNIQUEIDS = st.one_of(
    st.sampled_from(["1704190500.11", "1704240000.1", UID, "1704190500.12", "..", "*", "."]),
    st.text(alphabet="0123456789.*?[]/-_abcAB\\", min_size=1, max_size=20),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(uniqueid=UNIQUEIDS, day=st.dates(date(2023, 12, 30), date(2024, 1, 5)))
def test_property_signed_claims_serve_only_files_inside_the_directory(
    site: TlsRecordingSite, tree: Path, uniqueid: str, day: date
) -> None:
    """Even with the key (a claim the daemon itself signed), what is served is inside."""
    try:
        token = sign(KEY, Claim(uniqueid, day, 0))
    except ValueError:  # not a Uniqueid: the daemon never signs it
        return
    status, _, body = site.request("GET", f"/recordings/{token}")
    assert SECRET not in body
    if status == 200:
        inside = {
            p.read_bytes()
            for p in (tree / "monitor").rglob("*.wav")
            if p.is_file() and os.path.realpath(p).startswith(str((tree / "monitor").resolve()))
        }
        assert body in inside
    else:
        assert status == 404
