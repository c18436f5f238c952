"""Which file a journal record links: each of the call's Uniqueids, and the file Asterisk
named (``MIXMONITOR_FILENAME``) when it did.

The link never carries a path: for a named file it carries the Uniqueid and day with which
``pattern`` finds exactly that file again (fetching the link over TLS gives its bytes). A
named file that ``pattern`` cannot find gets no link and a ``recordings.unlinked`` line; one
a conversion replaced, or one outside ``directory``, leaves the search to ``pattern``.

Before: only the Linkedid and the root's Uniqueid were tried, and the name was unknown.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from recordings_site import Clock, lay_out, self_signed, tls_site
from structlog.testing import capture_logs

from kommo_callerid.core.config import Config, JournalConfig, NotifyConfig
from kommo_callerid.core.config_load import from_mapping
from kommo_callerid.daemon.recordings import Recordings
from kommo_callerid.journal.entry import JournalEntry, build_entry
from kommo_callerid.recordings.keys import KEY_FILE
from kommo_callerid.recordings.token import Claim, verify

from support import events, finished_call

BASE = "https://pbx.example.com:8443"
STARTED = 1_780_000_000.0
WHEN = datetime.fromtimestamp(STARTED)
CALL = "1780000000.10"  # the Linkedid: the trunk's channel
AGENT = "1780000001.14"  # the answering agent's Local ;2 (it ran MixMonitor)
OTHER = "1780000001.15"


def config(tmp: Path, monitor: Path, **recordings: Any) -> Config:
    return from_mapping(
        {
            "ami": {"secret": "x"},
            "kommo": {
                "base_url": "https://example.kommo.com",
                "access_token": "t",
                "token_file": str(tmp / "state" / "tokens.json"),
            },
            "recordings": {"directory": str(monitor), **recordings},
        }
    )


def record(uniqueids: tuple[str, ...] = (CALL, AGENT, OTHER), named: str = "") -> JournalEntry:
    call = replace(
        finished_call(CALL, "+18305803077", started_at=STARTED),
        uniqueids=uniqueids,
        recording_file=named,
    )
    entry = build_entry(call, JournalConfig(), NotifyConfig(), STARTED + 60)
    assert entry is not None
    return entry


async def settle(tmp: Path, monitor: Path, entry: JournalEntry, **options: Any) -> JournalEntry:
    """The record as the journal sends it, long after the grace (the answer is final)."""
    recordings = Recordings(
        config(tmp, monitor, **options), base_url=BASE, clock=Clock(STARTED + 3600)
    )
    ready, later = await recordings.settle([entry])
    assert later == []
    [sent] = ready
    return sent


def claim(tmp: Path, link: str) -> Claim:
    key = (tmp / "state" / KEY_FILE).read_bytes().strip()
    verified = verify(key, link.removeprefix(f"{BASE}/recordings/"), 0.0)
    assert isinstance(verified, Claim), link
    return verified


@pytest.fixture
def monitor(tmp_path: Path) -> Path:
    path = tmp_path / "monitor"
    path.mkdir()
    return path


async def test_a_file_named_by_an_agents_leg_is_found(tmp_path: Path, monitor: Path) -> None:
    lay_out(monitor, AGENT, WHEN, b"agent leg")
    sent = await settle(tmp_path, monitor, record())
    assert claim(tmp_path, sent.link).uniqueid == AGENT


async def test_without_the_calls_uniqueids_an_old_record_tries_its_linkedid(
    tmp_path: Path, monitor: Path
) -> None:
    """A record written before schema 2 (no Uniqueids) is looked up as before."""
    lay_out(monitor, AGENT, WHEN, b"agent leg")
    assert (await settle(tmp_path, monitor, record(uniqueids=()))).link == ""
    lay_out(monitor, CALL, WHEN, b"trunk")
    sent = await settle(tmp_path, monitor, record(uniqueids=()))
    assert claim(tmp_path, sent.link).uniqueid == CALL


async def test_the_named_file_is_linked_exactly_and_served(tmp_path: Path, monitor: Path) -> None:
    lay_out(monitor, CALL, WHEN, b"the trunk's file: not the one Asterisk named")
    named = lay_out(monitor, OTHER, WHEN, b"the named one", kind="exten")
    sent = await settle(tmp_path, monitor, record(named=str(named)))
    got = claim(tmp_path, sent.link)
    assert (got.uniqueid, got.day) == (OTHER, WHEN.date())
    assert str(named) not in sent.link and named.name not in sent.link
    key = (tmp_path / "state" / KEY_FILE).read_bytes().strip()
    cfg = config(tmp_path, monitor)
    with tls_site(cfg.recordings, key, self_signed(tmp_path), Clock(STARTED)) as site:
        status, _, body = site.request("GET", sent.link.removeprefix(BASE))
    assert (status, body) == (200, b"the named one")


async def test_a_named_file_relative_to_the_directory_and_a_uniqueid_from_its_name(
    tmp_path: Path, monitor: Path
) -> None:
    """The file's Uniqueid is not among the call's (a channel of a transfer): FreePBX's name
    ends with it."""
    named = lay_out(monitor, "1780000099.99", WHEN, b"x")
    relative = str(named.relative_to(monitor))
    sent = await settle(tmp_path, monitor, record(named=relative))
    assert claim(tmp_path, sent.link).uniqueid == "1780000099.99"


async def test_a_named_file_pattern_cannot_find_gets_no_link_and_a_line(
    tmp_path: Path, monitor: Path
) -> None:
    odd = monitor / "custom" / f"call-{AGENT}-kept.wav"  # not {yyyy}/{mm}/{dd}/*-{uniqueid}.*
    odd.parent.mkdir()
    odd.write_bytes(b"x")
    lay_out(monitor, CALL, WHEN, b"the trunk's file")  # never a different file instead
    with capture_logs() as logs:
        sent = await settle(tmp_path, monitor, record(named=str(odd)))
    assert sent.link == ""
    [line] = events(logs, "recordings.unlinked")
    assert (line["call_id"], line["reason"], line["log_level"]) == (CALL, "unfit", "warning")
    assert str(odd) not in str(line)


async def test_a_named_file_a_conversion_replaced_is_found_by_the_pattern(
    tmp_path: Path, monitor: Path
) -> None:
    converted = lay_out(monitor, AGENT, WHEN, b"mp3 bytes", ext="mp3")
    gone = converted.with_suffix(".wav")  # MIXMON_POST made the mp3 and removed the wav
    sent = await settle(tmp_path, monitor, record(named=str(gone)))
    assert claim(tmp_path, sent.link).uniqueid == AGENT


async def test_a_named_file_outside_the_directory_is_never_linked(
    tmp_path: Path, monitor: Path
) -> None:
    outside = lay_out(tmp_path / "elsewhere", AGENT, WHEN, b"secret")
    assert (await settle(tmp_path, monitor, record(named=str(outside)))).link == ""
    through = lay_out(monitor, AGENT, WHEN, b"")
    through.unlink()
    through.symlink_to(outside)  # inside by name, outside in fact
    assert (await settle(tmp_path, monitor, record(named=str(through)))).link == ""
