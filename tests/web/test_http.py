"""The local HTTP endpoint end to end: fake AMI -> daemon -> fake Kommo, and an HTTP client on
the daemon's own port. Real sockets throughout; nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from kommo_callerid.core.config import Config
from kommo_callerid.core.config_load import ConfigError, from_mapping
from kommo_callerid.daemon.app import EXIT_CONFIG, Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import BY_PHONE_PATH, EVENTS_PATH, FakeKommo, demo_dataset
from kommo_callerid.sim.kommo_data import FakeContact, KommoDataset
from kommo_callerid.sim.scenarios import CallScenarios
from kommo_callerid.web.callerid import sanitize_name

from support import make_config, running_daemon, wait_for

JOHN = "18305803077"  # contact John Doe in the demo dataset
MARIA = "14155550199"  # contact Maria Garcia, carried by the lead "Fleet renewal 2025"
UNKNOWN = "13125550100"
HOSTILE = "13125550177"
LONG = "13125550188"
HOSTILE_NAME = "Eve\r\nX-Injected: yes\x00\x07\u202e\u200b  Mallory\t\tthe\u2028Hacker "
LOCAL = {"listen": "127.0.0.1:0"}
DID = {"dids": {"5551000": [7]}, "to": ["did"]}  # one immediate notification per call


@pytest.fixture
async def kommo() -> AsyncIterator[FakeKommo]:
    base = demo_dataset()
    hostile = (
        FakeContact(1101, HOSTILE_NAME, (f"+{HOSTILE}",), 8375357, 1_700_000_000),
        FakeContact(1102, "Bartholomew " * 10, (f"+{LONG}",), 8375357, 1_700_000_000),
    )
    dataset = KommoDataset(
        contacts=base.contacts + hostile,
        companies=base.companies,
        leads=base.leads,
        customers=base.customers,
    )
    async with FakeKommo(dataset) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def config_with(**http: Any) -> Config:
    return from_mapping(
        {
            "ami": {"secret": "s"},
            "kommo": {"base_url": "https://acme.kommo.com", "access_token": "t"},
            "http": http,
        }
    )


def background_lookups() -> int:
    return sum("callerid" in task.get_name() for task in asyncio.all_tasks())


def url(daemon: Daemon, path: str) -> str:
    assert daemon.http_port is not None
    return f"http://127.0.0.1:{daemon.http_port}{path}"


async def get(client: aiohttp.ClientSession, target: str) -> tuple[int, str, str]:
    async with client.get(target) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), await answer.text()


async def health(client: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with client.get(url(daemon, "/healthz")) as answer:
        return answer.status, await answer.json()


async def callerid(client: aiohttp.ClientSession, daemon: Daemon, number: str) -> tuple[str, float]:
    started = time.monotonic()
    async with client.get(url(daemon, "/callerid"), params={"number": number}) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        return await answer.text(), time.monotonic() - started


async def scrape(client: aiohttp.ClientSession, daemon: Daemon) -> dict[tuple[str, str], float]:
    """Every sample as {(name, "label=value,..."): value}."""
    status, content_type, text = await get(client, url(daemon, "/metrics"))
    assert status == 200
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name, labels] = sample.value
    return samples


async def test_healthz_follows_the_ami_link_through_drop_and_hang(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    fast_ami = {"ping_interval": 0.1, "ping_timeout": 0.2, "connect_timeout": 0.5}
    config = make_config(ami, kommo, http=LOCAL, ami=fast_ami)
    async with running_daemon(config) as daemon:
        status, body = await health(client, daemon)
        assert (status, body["ami"]) == (200, "connected")
        assert body["version"] and body["uptime_seconds"] >= 0
        assert body["last_event_age_seconds"] is None  # no call yet

        ami.drop()
        await wait_for(lambda: not daemon.ami_connected)
        status, body = await health(client, daemon)
        assert (status, body["ami"]) == (503, "disconnected")
        await wait_for(lambda: daemon.ami_connected)
        assert (await health(client, daemon))[0] == 200

        ami.hang()  # the socket stays open; only the unanswered Ping tells
        await wait_for(lambda: not daemon.ami_connected)
        assert (await health(client, daemon))[0] == 503
        ami.unhang()
        await wait_for(lambda: daemon.ami_connected)
        status, body = await health(client, daemon)
        assert status == 200
        assert body["ami_reconnects"] >= 2


async def test_metrics_count_calls_notifications_skips_and_requests(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    scenarios = CallScenarios()
    calls = [scenarios.inbound(number, agents=()) for number in (JOHN, MARIA, UNKNOWN)]
    config = make_config(ami, kommo, http=LOCAL, notify=DID)
    async with running_daemon(config) as daemon:
        await ami.play(scenarios.anonymous(agents=()).events)
        for call in calls:
            await ami.play(call.events)
        await wait_for(lambda: len(kommo.events) == 3 and kommo.requests_to(BY_PHONE_PATH) == 3)
        await wait_for(lambda: daemon._running is not None and not daemon._running.call_tasks)
        metrics = await scrape(client, daemon)
        _, _, body = await get(client, url(daemon, "/healthz"))
        assert '"last_event_age_seconds": null' not in body

    def value(name: str, labels: str = "") -> float:
        return metrics[f"kommo_callerid_{name}", labels]

    assert value("calls_detected_total") == 3
    assert value("calls_skipped_total", "reason=anonymous") == 1
    assert value("calls_skipped_total", "reason=internal") == 0  # known reasons start at 0
    assert value("notifications_sent_total") == 3
    assert value("notifications_failed_total") == 0
    assert value("notifications_dropped_total", "reason=ttl") == 0
    assert value("notification_latency_seconds_count") == 3
    assert value("notification_latency_seconds_bucket", "le=+Inf") == 3
    assert value("lookups_total") == 3
    assert value("lookup_duration_seconds_count") == 3
    assert value("kommo_requests_total", f"endpoint={EVENTS_PATH},status=200") == 3
    assert value("kommo_requests_total", f"endpoint={BY_PHONE_PATH},status=200") == 2
    assert value("kommo_requests_total", f"endpoint={BY_PHONE_PATH},status=204") == 1  # unknown
    assert value("cache_entries") == 3
    assert value("ami_connected") == 1
    assert value("ami_reconnects_total") == 0
    assert value("ami_events_received_total") == 4  # one Newchannel per call, no agent legs
    assert value("event_queue_depth") == 0
    assert value("build_info", "version=0.1.0") == 1


async def test_ami_event_counts_add_up_across_reconnects(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    scenarios = CallScenarios()
    config = make_config(ami, kommo, http=LOCAL, notify=DID)
    async with running_daemon(config) as daemon:
        await ami.play(scenarios.inbound(JOHN, agents=()).events)
        await wait_for(lambda: len(kommo.events) == 1)
        ami.drop()
        await wait_for(lambda: not daemon.ami_connected)
        await wait_for(lambda: daemon.ami_connected)
        await ami.play(scenarios.inbound(MARIA, agents=()).events)
        await wait_for(lambda: len(kommo.events) == 2)
        metrics = await scrape(client, daemon)
    assert metrics["kommo_callerid_ami_events_received_total", ""] == 2  # one per session
    assert metrics["kommo_callerid_ami_reconnects_total", ""] == 1
    assert metrics["kommo_callerid_calls_detected_total", ""] == 2


async def test_stats_line_carries_the_same_counters_as_metrics(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    call = CallScenarios().inbound(JOHN, agents=())
    config = make_config(ami, kommo, http=LOCAL, notify=DID)
    with capture_logs() as logs:
        async with running_daemon(config) as daemon:
            await ami.play(call.events)
            await wait_for(lambda: kommo.requests_to(BY_PHONE_PATH) == 1 and len(kommo.events))
            await wait_for(lambda: daemon._running is not None and not daemon._running.call_tasks)
            assert (await callerid(client, daemon, JOHN))[0] == "John Doe"  # a cache hit
            metrics = await scrape(client, daemon)
    (stopped,) = [line for line in logs if line["event"] == "daemon.stopped"]
    assert stopped["calls_incoming"] == metrics["kommo_callerid_calls_detected_total", ""] == 1
    assert stopped["notifications_sent"] == metrics["kommo_callerid_notifications_sent_total", ""]
    assert stopped["lookups"] == metrics["kommo_callerid_lookups_total", ""] == 2
    assert stopped["lookup_cache_hits"] == 1
    assert stopped["cache_entries"] == metrics["kommo_callerid_cache_entries", ""] == 1
    assert stopped["ami_events_received"] == 1
    assert stopped["kommo_requests"] == {f"{EVENTS_PATH} 200": 1, f"{BY_PHONE_PATH} 200": 1}
    assert stopped["callerid_answers"] == {"found": 1}
    assert metrics["kommo_callerid_callerid_requests_total", "result=found"] == 1


async def test_callerid_answers_within_its_bound_when_kommo_is_slow_then_from_the_cache(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    kommo.set_delay(BY_PHONE_PATH, 0.8)
    http = {**LOCAL, "callerid_timeout": 0.3}
    async with running_daemon(make_config(ami, kommo, http=http)) as daemon:
        name, elapsed = await callerid(client, daemon, f"+{JOHN}")
        assert (name, elapsed < 0.3 + 0.3) == ("", True)
        name, elapsed = await callerid(client, daemon, JOHN)  # joins the running lookup
        assert (name, elapsed < 0.3 + 0.3) == ("", True)
        await wait_for(lambda: background_lookups() == 0, timeout=3)
        name, elapsed = await callerid(client, daemon, JOHN)
        assert name == "John Doe"
        assert elapsed < 0.3
        assert kommo.requests_to(BY_PHONE_PATH) == 1  # single flight, then the cache


async def test_callerid_background_lookup_is_cancelled_at_shutdown(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    kommo.set_delay(BY_PHONE_PATH, 30)
    http = {**LOCAL, "callerid_timeout": 0.1}
    started = time.monotonic()
    async with running_daemon(make_config(ami, kommo, http=http)) as daemon:
        assert (await callerid(client, daemon, JOHN))[0] == ""
        assert background_lookups() == 1
    assert time.monotonic() - started < 5  # the stop did not wait out Kommo's 30 s
    assert background_lookups() == 0


async def test_callerid_names_the_person_and_sanitises_what_goes_into_a_sip_header(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        assert (await callerid(client, daemon, MARIA))[0] == "Maria Garcia"  # not the lead
        hostile = (await callerid(client, daemon, HOSTILE))[0]
        long = (await callerid(client, daemon, LONG))[0]
    assert hostile == "Eve X-Injected: yes Mallory the Hacker"
    assert not any(unicodedata.category(char).startswith("C") for char in hostile)
    assert len(long) <= 40
    assert long.startswith("Bartholomew Bartholomew")
    assert long == long.strip()


async def test_callerid_is_empty_for_unknown_invalid_and_failed_lookups(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    kommo.fail_next(BY_PHONE_PATH, 400, "<html>oops</html>", content_type="text/html")
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        assert (await callerid(client, daemon, "14155550111"))[0] == ""  # Kommo error
        for number in (UNKNOWN, "abc", "101", "", "1" * 500, "+1\r\n415", "%00"):
            assert (await callerid(client, daemon, number))[0] == ""
        status, _, body = await get(client, url(daemon, "/callerid"))  # no number at all
        assert (status, body) == (200, "")
        metrics = await scrape(client, daemon)
    assert metrics["kommo_callerid_callerid_requests_total", "result=error"] == 1
    assert metrics["kommo_callerid_callerid_requests_total", "result=unknown"] == 1
    assert metrics["kommo_callerid_callerid_requests_total", "result=invalid"] >= 4


async def test_unknown_paths_are_404_and_only_get_is_served(
    ami: FakeAmiServer, kommo: FakeKommo, client: aiohttp.ClientSession
) -> None:
    async with running_daemon(make_config(ami, kommo, http=LOCAL)) as daemon:
        assert (await get(client, url(daemon, "/nope")))[0] == 404
        assert (await get(client, url(daemon, "/")))[0] == 404
        for method in ("POST", "PUT", "DELETE"):
            async with client.request(method, url(daemon, "/healthz")) as answer:
                assert answer.status == 405


async def test_no_endpoint_without_listen(ami: FakeAmiServer, kommo: FakeKommo) -> None:
    async with running_daemon(make_config(ami, kommo)) as daemon:
        assert daemon.http_port is None


async def test_a_listen_address_in_use_is_a_start_up_failure(
    ami: FakeAmiServer, kommo: FakeKommo
) -> None:
    config = make_config(ami, kommo, http=LOCAL)
    async with running_daemon(config) as first:
        taken = {"listen": f"127.0.0.1:{first.http_port}"}
        with capture_logs() as logs:
            assert await Daemon(make_config(ami, kommo, http=taken)).serve() == EXIT_CONFIG
    assert any(line["event"] == "http.listen_failed" for line in logs)


@pytest.mark.parametrize("listen", ["0.0.0.0:8899", "192.0.2.7:8899", "[::]:8899", "pbx:8899"])
def test_a_public_listen_address_needs_allow_public(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"\[http\] listen = .* allow_public = true"):
        config_with(listen=listen)
    assert config_with(listen=listen, allow_public=True).http.address[1] == 8899


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:8899", ("127.0.0.1", 8899)),
        ("[::1]:8899", ("::1", 8899)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_loopback_listen_addresses_parse(listen: str, address: tuple[str, int]) -> None:
    assert config_with(listen=listen).http.address == address


@pytest.mark.parametrize(
    "listen", ["8899", "::1:8899", "127.0.0.1:http", "127.0.0.1:70000", ":8899"]
)
def test_malformed_listen_addresses_are_config_errors(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"\[http\] listen"):
        config_with(listen=listen)


def test_sanitize_name_keeps_letters_and_drops_what_a_sip_header_must_not_carry() -> None:
    assert sanitize_name("  José\u00a0Müller  ", 40) == "José Müller"
    assert sanitize_name("a\rb\nc\x1bd\x7f", 40) == "a b c d"
    assert sanitize_name("abc def", 4) == "abc"
    assert sanitize_name("\u200e\u202e", 40) == ""
