"""The phone book with ``[cluster]``: two daemons on one Redis and one fake Kommo; one syncs
(the lease), both answer from their own mirror, and the other takes over when it stops."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from cluster_helpers import cluster_config
from redis_server import RedisServer

from kommo_callerid.daemon.app import Daemon
from kommo_callerid.daemon.phonebook import PhoneBookParts
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo, demo_dataset
from kommo_callerid.sim.kommo_data import FakeContact

from support import running_daemon, wait_for

INTERVAL = 1.0
LIST_PATHS = tuple(f"/api/v4/{kind}" for kind in ("contacts", "companies", "leads", "customers"))


def parts(daemon: Daemon) -> PhoneBookParts:
    running = daemon._running  # a test looks inside
    assert running is not None and running.phonebook is not None
    return running.phonebook


def leading(daemon: Daemon) -> bool:
    leadership = parts(daemon).leadership
    assert leadership is not None
    return leadership.leading


def answers(daemon: Daemon, number: str) -> int | None:
    """The entity id the daemon's phone book answers for ``number`` (None: it does not)."""
    running = daemon._running
    assert running is not None and running.front is not None
    found = running.front.from_mirror(number)
    return found.entity.id if found is not None and found.entity is not None else None


def list_requests(kommo: FakeKommo) -> int:
    return sum(kommo.requests_to(path) for path in LIST_PATHS)


def add_contact(kommo: FakeKommo, id_: int, phone: str) -> None:
    data = kommo.dataset
    stamp = int(time.time())
    contact = FakeContact(id_, f"New Caller {id_}", (phone,), 8320148, stamp, stamp)
    kommo.dataset = replace(data, contacts=(*data.contacts, contact))


async def start(
    stacks: dict[str, AsyncExitStack],
    node: str,
    ami: FakeAmiServer,
    kommo: FakeKommo,
    redis: RedisServer,
    tmp_path: Path,
) -> Daemon:
    config = cluster_config(
        ami,
        kommo,
        redis.url,
        node,
        phonebook={
            "enabled": True,
            "database": str(tmp_path / f"{node}.sqlite3"),
            "sync_interval": INTERVAL,
        },
    )
    stack = stacks[node] = AsyncExitStack()
    return await stack.enter_async_context(running_daemon(config))


async def test_one_daemon_syncs_both_answer_the_other_takes_over(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    stacks: dict[str, AsyncExitStack] = {}
    async with FakeKommo(demo_dataset()) as kommo:
        try:
            daemons = {
                node: await start(stacks, node, ami, kommo, redis_server, tmp_path)
                for node in ("a", "b")
            }
            await wait_for(lambda: all(d.phonebook_ready for d in daemons.values()), timeout=15)
            leaders = [node for node, daemon in daemons.items() if leading(daemon)]
            assert len(leaders) == 1
            leader, other = leaders[0], "b" if leaders[0] == "a" else "a"
            # only the leader asks Kommo
            assert parts(daemons[other]).sync.stats.requests == 0
            assert parts(daemons[leader]).sync.stats.requests == list_requests(kommo)

            add_contact(kommo, 1099, "15550107777")
            added = time.monotonic()
            await wait_for(
                lambda: all(answers(d, "15550107777") == 1099 for d in daemons.values()),
                timeout=INTERVAL + 3.0,
            )
            assert time.monotonic() - added <= INTERVAL + 3.0
            assert parts(daemons[other]).sync.stats.requests == 0
            assert parts(daemons[leader]).sync.stats.requests == list_requests(kommo)

            leader_stats = parts(daemons[leader]).sync.stats  # kept: a stopped daemon has none
            await stacks.pop(leader).aclose()  # the leader stops (and gives the lease up)
            await wait_for(lambda: leading(daemons[other]), timeout=5)
            other_stats = parts(daemons[other]).sync.stats
            await wait_for(lambda: other_stats.requests > 0, timeout=5)
            # Kommo saw the other's requests too, and no one else's. (Counted, not read before
            # and after the leader's stop: on a busy machine the other may take over and
            # finish its pass while the leader is still stopping.)
            await wait_for(
                lambda: list_requests(kommo) == leader_stats.requests + other_stats.requests,
                timeout=5,
            )
            add_contact(kommo, 1098, "15550108888")
            await wait_for(lambda: answers(daemons[other], "15550108888") == 1098, timeout=4)
            assert answers(daemons[other], "15550107777") == 1099
        finally:
            for stack in stacks.values():
                await stack.aclose()


async def test_a_daemon_that_missed_the_feed_asks_for_a_full_pass(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    stacks: dict[str, AsyncExitStack] = {}
    async with FakeKommo(demo_dataset()) as kommo:
        try:
            first = await start(stacks, "a", ami, kommo, redis_server, tmp_path)
            await wait_for(lambda: first.phonebook_ready, timeout=15)
            assert parts(first).sync.stats.full_passes == 1
            # what a long stop does: the entries it would need are trimmed away
            client = redis_server.client()
            await wait_for(lambda: parts(first).sync.stats.incremental >= 1, timeout=5)
            await client.xtrim("kommo-callerid:phonebook:feed", maxlen=1, approximate=False)
            await client.aclose()
            late = await start(stacks, "b", ami, kommo, redis_server, tmp_path)
            await wait_for(lambda: late.phonebook_ready, timeout=15)
            assert parts(first).sync.stats.full_passes == 2  # asked for by the late one
            assert parts(late).sync.stats.requests == 0
            assert answers(late, "18305803077") == answers(first, "18305803077") is not None
        finally:
            for stack in stacks.values():
                await stack.aclose()


async def test_redis_lost_every_daemon_answers_and_syncs_alone(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    stacks: dict[str, AsyncExitStack] = {}
    async with FakeKommo(demo_dataset()) as kommo:
        try:
            daemons = [
                await start(stacks, node, ami, kommo, redis_server, tmp_path) for node in "ab"
            ]
            await wait_for(lambda: all(d.phonebook_ready for d in daemons), timeout=15)
            known = answers(daemons[0], "18305803077")
            assert known is not None
            follower = next(d for d in daemons if not leading(d))
            assert parts(follower).sync.stats.requests == 0
            await redis_server.stop()

            def degraded(daemon: Daemon) -> bool:
                running = daemon._running
                return (
                    running is not None
                    and running.cluster is not None
                    and (not running.cluster.link.ok)
                )

            await wait_for(lambda: all(degraded(d) for d in daemons), timeout=10)
            assert all(answers(d, "18305803077") == known for d in daemons)
            add_contact(kommo, 1097, "15550109999")
            await wait_for(
                lambda: all(answers(d, "15550109999") == 1097 for d in daemons),
                timeout=INTERVAL + 3.0,
            )
            assert parts(follower).sync.stats.requests > 0  # it synced itself
        finally:
            for stack in stacks.values():
                await stack.aclose()


async def test_an_unreadable_entry_costs_a_full_pass_not_a_crash(
    ami: FakeAmiServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    stacks: dict[str, AsyncExitStack] = {}
    async with FakeKommo(demo_dataset()) as kommo:
        try:
            daemons = [
                await start(stacks, node, ami, kommo, redis_server, tmp_path) for node in "ab"
            ]
            await wait_for(lambda: all(d.phonebook_ready for d in daemons), timeout=15)
            leader = next(d for d in daemons if leading(d))
            follower = next(d for d in daemons if not leading(d))
            passes = parts(leader).sync.stats.full_passes
            client = redis_server.client()
            head = await client.get("kommo-callerid:phonebook:head")
            await client.xadd(
                "kommo-callerid:phonebook:feed", {"prev": head, "op": b"\xff{not json"}
            )
            await client.aclose()
            await wait_for(lambda: parts(leader).sync.stats.full_passes > passes, timeout=10)
            leadership = parts(follower).leadership
            assert leadership is not None
            await wait_for(lambda: not leadership.follower.gapped, timeout=10)
            assert answers(follower, "18305803077") is not None
            assert parts(follower).sync.stats.requests == 0
        finally:
            for stack in stacks.values():
                await stack.aclose()
