"""A Redis failover mid-burst: the replica is promoted while the old primary, turned into a replica
of it, answers READONLY to the workers for a moment; then the workers' address (a fault proxy
standing for a failover VIP or a Sentinel-aware client) moves to the new primary and their
connections are dropped. Nothing acknowledged may be lost, no READONLY may become a dead letter,
and every pass criterion of the suite holds on the new primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from flashsale.embedded import ManagedProcess, free_port, start_redis
from schemas.topics import TopicNames
from tests.faults.checks import (
    InvariantSampler,
    decided,
    first_decision_after,
    longest_pause,
    record,
    resumed_after,
)
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.broker import Broker
from tests.harness.tcp_proxy import TcpProxy, proxy_factory  # noqa: F401 - fixture
from tests.harness.worker_group import PARTITIONS, WorkerGroup, fault_env

pytestmark = pytest.mark.faults

ATTEMPTS = 12_000  # at 1,000/s: the failover starts 3.6 s in, the hold keeps 30 % back until it is done
ALLOTMENT = 1200  # sells out late in the burst, after the failover
RATE = 1000
READONLY_S = 2.0  # how long the workers still reach the demoted primary
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


@dataclass
class Pair:
    """A primary and its replica (real redis-server processes on free ports)."""

    ports: tuple[int, int]
    procs: list[ManagedProcess]

    def url(self, i: int) -> str:
        return f"redis://127.0.0.1:{self.ports[i]}/0"


@pytest.fixture
def redis_pair(tmp_path: Path) -> Iterator[Pair]:
    p1, p2 = free_port(), free_port()
    procs = [start_redis(p1, tmp_path / "r1", tmp_path / "logs", name="redis-primary")]
    try:
        procs.append(start_redis(p2, tmp_path / "r2", tmp_path / "logs", name="redis-replica",
                                 extra=["--replicaof", "127.0.0.1", str(p1)]))
        yield Pair((p1, p2), procs)
    finally:
        for p in procs:
            p.stop()


async def replication(client: aioredis.Redis) -> dict[str, str]:
    info = await client.info("replication")
    return {str(k): str(v) for k, v in info.items()}


async def wait_caught_up(primary: aioredis.Redis, replica: aioredis.Redis, timeout: float = 10.0) -> int:
    """Wait until the replica has applied everything the primary wrote; returns the offset."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        want = int((await replication(primary))["master_repl_offset"])
        rep = await replication(replica)
        if rep.get("master_link_status") == "up" and int(rep.get("slave_repl_offset", -1)) >= want:
            return want
        await asyncio.sleep(0.01)
    raise AssertionError(f"replica not caught up within {timeout}s: {await replication(replica)}")


@pytest.fixture
async def pair_clients(redis_pair: Pair) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    c1 = aioredis.Redis.from_url(redis_pair.url(0))
    c2 = aioredis.Redis.from_url(redis_pair.url(1))
    yield c1, c2
    await c1.aclose()
    await c2.aclose()


async def test_failover_with_readonly_old_primary(broker: Broker, topics: dict[str, str], topic_prefix: str,
                                                  redis_pair: Pair,
                                                  pair_clients: tuple[aioredis.Redis, aioredis.Redis],
                                                  proxy_factory: Any, tmp_path: Path,  # noqa: F811
                                                  artifacts_dir: Path) -> None:
    old, new = pair_clients
    await wait_caught_up(old, new)
    proxy: TcpProxy = proxy_factory(redis_pair.ports[0], name="redis-vip")
    group = WorkerGroup(fault_env(broker, proxy.url, topic_prefix), tmp_path / "logs")
    current = [old]  # the primary now, for the invariant sampler
    try:
        await group.start("a", "b")
        await group.wait_split(TopicNames(topic_prefix).orders)
        sales = make_sales(PARTITIONS, allotment=ALLOTMENT)
        hold = asyncio.Event()
        async with (Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=RATE, bad=LIGHT_BAD, hold=hold,
                            hold_fraction=0.3, seed=21) as traffic,
                    InvariantSampler(lambda: current[0], sales) as sampler):
            await traffic.open_sales()
            sending = asyncio.create_task(traffic.run())
            await traffic.reached(0.3)
            readonly_before = (await old.info("errorstats")).get("errorstat_READONLY", {}).get("count", 0)
            # A controlled failover, as Sentinel's or a managed service's: writes paused on the primary,
            # the replica caught up, promoted, the old primary turned into its replica.
            started = time.time()
            await old.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
            offset = await wait_caught_up(old, new)
            await new.execute_command("REPLICAOF", "NO", "ONE")
            promoted = time.time()
            current[0] = new
            await old.execute_command("REPLICAOF", "127.0.0.1", str(redis_pair.ports[1]))
            await old.execute_command("CLIENT", "UNPAUSE")
            await asyncio.sleep(READONLY_S)  # the workers still talk to the old primary: READONLY
            readonly = (await old.info("errorstats")).get("errorstat_READONLY", {}).get("count", 0) - readonly_before
            readyz = {n: (await group.readyz(n))[0] for n in group.workers}
            before = await decided(new, sales)
            repointed = proxy.repoint(redis_pair.ports[1])  # the VIP moves; open connections drop
            traffic.release(300)
            resumed_s = await resumed_after(new, sales, before, repointed)
            # Recorded, not asserted: the first /readyz after the workers' Redis connections drop
            # sometimes answers a false 503 (issue 13, item 6: the probe's pooled connection is dead;
            # seen in 2 of 4 runs, too rare for a strict xfail). verify() asserts 200 after it.
            readyz_after = {n: (await group.readyz(n))[0] for n in group.workers}
            hold.set()
            await sending
            out = await verify(broker.bootstrap, redis_pair.url(1), topic_prefix, traffic, sales, new, group,
                               tag="fresh-failover")
        sampled = sampler.check()
    finally:
        group.stop_all()
    assert readonly > 0, "the workers never met the demoted primary's READONLY"
    assert (await replication(new))["role"] == "master" and (await replication(old))["role"] == "slave"
    answers = [i for i in out.decisions if i.value["type"] in ("order.accepted", "order.rejected")]
    first = first_decision_after(answers, set(range(PARTITIONS)), int(repointed * 1000))
    assert first is not None
    record(artifacts_dir, {
        "test": "redis_failover_readonly", "readonly_s": READONLY_S, "readonly_replies": readonly,
        "pause_to_promoted_s": round(promoted - started, 3), "replication_offset": offset,
        "readyz_while_readonly": readyz,
        "readyz_first_after_repoint": readyz_after, "repoint_to_progress_s": round(resumed_s, 2),
        "repoint_to_first_decision_s": round((first - repointed * 1000) / 1000, 2),
        "promote_to_first_decision_s": round((first - promoted * 1000) / 1000, 2),
        "longest_decision_pause_s": round(longest_pause(answers, int(started * 1000) - 1000,
                                                        first + 1000) / 1000, 2),
        **sampled, **out.summary})
