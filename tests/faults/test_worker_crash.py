"""Workers die with SIGKILL mid-sale: the group takes over, nothing is lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.topics import TopicNames
from tests.faults.checks import first_decision_after, longest_pause, record
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, SaleSpec, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.worker_group import PARTITIONS

pytestmark = pytest.mark.faults

ATTEMPTS = 20_000
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


async def test_kill_one_of_two_workers(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis, topic_prefix: str,
                                       group_factory: Any, artifacts_dir: Path) -> None:
    orders = TopicNames(topic_prefix).orders
    group = group_factory()
    await group.start("a", "b")
    split = await group.wait_split(orders)
    sales = make_sales(PARTITIONS)
    hold = asyncio.Event()
    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=1500, bad=LIGHT_BAD, hold=hold,
                       hold_fraction=0.2) as traffic:
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        await traffic.reached(0.25)
        dead = split["a"]
        killed_at = group.kill("a")
        taken = time.monotonic()
        await group.wait_split(orders, settle=0.5)  # the survivor holds every partition
        takeover_seen_s = time.monotonic() - taken
        hold.set()
        await sending
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group)

    killed_ms = int(killed_at * 1000)
    first = first_decision_after(out.decisions, dead, killed_ms)
    assert first is not None, "the dead worker's partitions were decided again"
    takeover_s = (first - killed_ms) / 1000
    pause_s = longest_pause(out.decisions, killed_ms - 1000, first + 1000) / 1000
    record(artifacts_dir, {"test": "kill_one_of_two", "dead_partitions": sorted(dead),
                           "takeover_s": round(takeover_s, 2), "pause_all_s": round(pause_s, 2),
                           "survivor_holds_all_seen_s": round(takeover_seen_s, 2), **out.summary})


async def _decided(client: aioredis.Redis, sales: list[SaleSpec]) -> int:
    """Attempts decided so far, over every sale (the sale hashes' attempt counters)."""
    total = 0
    for s in sales:
        total += int(await client.hget(rk.sale(s.sale_id), "attempts") or 0)
    return total


async def _resumed(client: aioredis.Redis, sales: list[SaleSpec], before: int, timeout: float = 60.0) -> float:
    """Seconds until the decided count grows past ``before`` (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await _decided(client, sales) > before:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"no decision within {timeout}s")


async def test_kill_all_workers_and_restart_three_times(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis,
                                                        topic_prefix: str, group_factory: Any,
                                                        artifacts_dir: Path) -> None:
    group = group_factory()
    await group.start("a", "b")
    sales = make_sales(PARTITIONS)
    hold = asyncio.Event()
    rounds = []
    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=1000, bad=LIGHT_BAD, hold=hold,
                       hold_fraction=0.25, seed=2) as traffic:
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        for fraction in (0.1, 0.3, 0.5):
            await traffic.reached(fraction)
            killed_at = min(group.kill("a"), group.kill("b"))
            before = await _decided(rc, sales)
            t0 = time.monotonic()
            ready = await group.start("a", "b")
            ready_s = time.monotonic() - t0
            # Traffic may already wait at the hold with every sent attempt decided (the restarted
            # workers drain a backlog in a second or two): let a few more through, so there is
            # something to resume on whatever the timing.
            traffic.release(300)
            resumed_s = await _resumed(rc, sales, before)
            rounds.append({"killed_ms": int(killed_at * 1000), "restart_ready_s": round(ready_s, 2),
                           "decisions_resumed_after_ready_s": round(resumed_s, 2),
                           "workers": [w.pid for w in ready]})
        hold.set()
        await sending
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group)

    for r in rounds:
        first = first_decision_after(out.decisions, set(range(PARTITIONS)), r["killed_ms"])
        assert first is not None
        r["kill_to_first_decision_s"] = round((first - r["killed_ms"]) / 1000, 2)
    record(artifacts_dir, {"test": "kill_all_restart_x3", "rounds": rounds, **out.summary})
