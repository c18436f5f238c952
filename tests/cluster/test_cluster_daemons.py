"""Several daemons on one Redis and one fake Kommo enforcing 7 requests/s, over real sockets."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from cluster_helpers import UniqueCalls, cluster_config, most_in_any_window, notified_per_caller
from redis_server import RedisServer
from structlog.testing import capture_logs

from kommo_callerid.core.models import FinishedCall
from kommo_callerid.daemon.app import Daemon
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import events, running_daemon, wait_for


async def test_three_daemons_three_pbxs_300_calls_in_10_s(redis_server: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        logs = stack.enter_context(capture_logs())
        pbxs = [await stack.enter_async_context(FakeAmiServer()) for _ in range(3)]
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=7))
        for index, ami in enumerate(pbxs):
            config = cluster_config(ami, kommo, redis_server.url, f"node{index}", nodes=3)
            await stack.enter_async_context(running_daemon(config))
        calls = [UniqueCalls(pbx) for pbx in range(3)]
        for _ in range(100):  # 3 calls every 0.1 s: 300 calls in 10 s
            for ami, source in zip(pbxs, calls, strict=True):
                await ami.play(source.next().events)
            await asyncio.sleep(0.1)
        await wait_for(lambda: len(notified_per_caller(kommo)) == 300, timeout=30)
    per_caller = notified_per_caller(kommo)
    assert len(per_caller) == 300
    assert set(per_caller.values()) == {1}
    assert kommo.violations == 0
    assert most_in_any_window([r.at for r in kommo.requests]) <= 7
    assert not events(logs, "cluster.degraded")


async def test_two_daemons_on_one_pbx_notify_each_call_once(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=7))
        for node in ("a", "b"):
            config = cluster_config(ami, kommo, redis_server.url, node)
            await stack.enter_async_context(running_daemon(config))
        await ami.wait_logged_in(count=2)
        source = UniqueCalls()
        calls = [source.next() for _ in range(100)]
        with capture_logs() as logs:
            for call in calls:
                await ami.play(call.events)
                await asyncio.sleep(0.01)
            await wait_for(lambda: len(notified_per_caller(kommo)) == 100, timeout=20)
            for call in calls:
                await ami.play(call.hangups)
            await asyncio.sleep(0.5)
    assert set(notified_per_caller(kommo).values()) == {1}
    assert len(events(logs, "call.incoming")) == 200  # both saw every call; one notified it
    assert kommo.violations == 0


OUTAGE = 20  # seconds without Redis


async def test_redis_lost_daemons_go_on_alone_then_restored(redis_server: RedisServer) -> None:
    # Redis is away for 20 s, as the trial had it: degradation is noticed within one
    # probe (1 s), and every second of the outage must stay within the daemons' local shares.
    async with AsyncExitStack() as stack:
        pbxs = [await stack.enter_async_context(FakeAmiServer()) for _ in range(2)]
        kommo = await stack.enter_async_context(FakeKommo(rate_limit=7))
        logs = stack.enter_context(capture_logs())
        for index, ami in enumerate(pbxs):
            config = cluster_config(ami, kommo, redis_server.url, f"node{index}")
            await stack.enter_async_context(running_daemon(config))
        calls = [UniqueCalls(pbx) for pbx in range(2)]

        async def place(seconds: float) -> None:
            for _ in range(round(seconds / 0.25)):  # 8 calls/s in all, more than a share
                for ami, source in zip(pbxs, calls, strict=True):
                    await ami.play(source.next().events)
                await asyncio.sleep(0.25)

        await place(1.0)
        await redis_server.stop()
        lost_at = asyncio.get_running_loop().time()
        await place(OUTAGE)
        await redis_server.start()
        await wait_for(lambda: len(events(logs, "cluster.restored")) == 2, timeout=5)
        await place(1.0)
        await wait_for(lambda: len(notified_per_caller(kommo)) == 8 * (OUTAGE + 2), timeout=60)
    assert {line["node"] for line in events(logs, "cluster.degraded")} == {"node0", "node1"}
    assert kommo.violations == 0
    outage = [r.at for r in kommo.requests if lost_at + 1 < r.at < lost_at + OUTAGE]
    assert most_in_any_window(outage) <= 2 * 3  # two daemons, each floor(7 / 2) a second


async def test_wrong_password_or_no_redis_is_exit_3(
    ami: FakeAmiServer, tmp_path_factory: object
) -> None:
    import tempfile
    from pathlib import Path

    from kommo_callerid.daemon.app import EXIT_CONFIG, Daemon

    with tempfile.TemporaryDirectory() as directory:
        guarded = RedisServer(Path(directory), password="right")
        await guarded.start()
        try:
            async with FakeKommo() as kommo:
                wrong = f"redis://:wrong@127.0.0.1:{guarded.port}/0"
                with capture_logs() as logs:
                    assert await Daemon(cluster_config(ami, kommo, wrong, "a")).serve() == 3
                    nowhere = "redis://127.0.0.1:1/0"
                    code = await Daemon(cluster_config(ami, kommo, nowhere, "a")).serve()
                    assert code == EXIT_CONFIG
        finally:
            await guarded.stop()
    failures = events(logs, "cluster.connect_failed")
    assert "refused the password" in failures[0]["detail"]
    assert "wrong" not in failures[0]["detail"]
    assert "cannot reach Redis" in failures[1]["detail"]


async def test_check_reaches_redis(ami: FakeAmiServer, redis_server: RedisServer) -> None:
    import io

    from kommo_callerid.commands.check_cluster import check_cluster
    from kommo_callerid.commands.report import Report

    async with FakeKommo() as kommo:
        good = cluster_config(ami, kommo, redis_server.url, "a")
        bad = cluster_config(ami, kommo, "redis://127.0.0.1:1/0", "a")
    out = io.StringIO()
    report = Report(out, colour=False)
    await check_cluster(good, report)
    assert report.all_well
    await check_cluster(bad, report)
    assert not report.all_well
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in out.getvalue()


async def test_healthz_and_metrics_say_ok_then_degraded(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    import aiohttp

    async with FakeKommo() as kommo:
        config = cluster_config(ami, kommo, redis_server.url, "a", http={"listen": "127.0.0.1:0"})
        async with running_daemon(config) as daemon, aiohttp.ClientSession() as client:
            base = f"http://127.0.0.1:{daemon.http_port}"

            async def cluster_state() -> tuple[str, str]:
                async with client.get(f"{base}/healthz") as answer:
                    health = (await answer.json())["cluster"]
                async with client.get(f"{base}/metrics") as answer:
                    text = await answer.text()
                up = next(
                    line
                    for line in text.splitlines()
                    if line.startswith("kommo_callerid_cluster_up")
                )
                return health, up.split()[-1]

            assert await cluster_state() == ("ok", "1.0")
            await redis_server.stop()
            await asyncio.sleep(1.5)  # the probe notices within a second
            assert await cluster_state() == ("degraded", "0.0")


class _Journal:
    """A journal sink that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def record(self, call: FinishedCall) -> None:
        self.calls.append(call.call_id)


async def test_two_daemons_on_one_pbx_journal_each_call_once(
    ami: FakeAmiServer, redis_server: RedisServer
) -> None:
    journals = [_Journal(), _Journal()]
    async with AsyncExitStack() as stack:
        kommo = await stack.enter_async_context(FakeKommo())
        for node, journal in zip(("a", "b"), journals, strict=True):
            config = cluster_config(ami, kommo, redis_server.url, node)
            daemon = Daemon(config, journal_sink=journal)
            serving = asyncio.create_task(daemon.serve())
            stack.push_async_callback(_stopped, daemon, serving)
        await ami.wait_logged_in(count=2)
        source = UniqueCalls()
        calls = [source.next() for _ in range(30)]
        for call in calls:
            await ami.play(call.events)
            await ami.play(call.hangups)
        await wait_for(lambda: sum(len(j.calls) for j in journals) >= 30, timeout=10)
        await asyncio.sleep(0.5)
    journaled = [call_id for journal in journals for call_id in journal.calls]
    assert sorted(journaled) == sorted(call.linkedid for call in calls)


async def _stopped(daemon: Daemon, serving: asyncio.Task[int]) -> None:
    daemon.stop.set()
    assert await serving == 0
