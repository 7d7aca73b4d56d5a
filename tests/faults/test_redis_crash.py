"""redis-server dies with SIGKILL mid-sale (AOF, appendfsync everysec) and comes back on the same
port and data dir: the workers wait and retry, nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.topics import TopicNames
from tests.faults.checks import first_decision_after, longest_pause, record
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.worker_group import PARTITIONS

pytestmark = pytest.mark.faults

ATTEMPTS = 10_000  # at 1,500/s: Redis dies 2 s in, the hold keeps 30 % back until it is back
ALLOTMENT = 750  # sells out as the 1,500 of a 20,000-attempt sale did
DOWN_S = 3.0  # how long Redis stays dead
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


async def test_kill_redis_mid_sale_and_restart(broker: Broker, aof_redis: AofRedis, topic_prefix: str,
                                               group_factory: Any, artifacts_dir: Path) -> None:
    orders = TopicNames(topic_prefix).orders
    group = group_factory()
    await group.start("a", "b")
    await group.wait_split(orders)
    sales = make_sales(PARTITIONS, allotment=ALLOTMENT)
    hold = asyncio.Event()
    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=1500, bad=LIGHT_BAD, hold=hold,
                       hold_fraction=0.3, seed=4) as traffic:
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        await traffic.reached(0.3)
        aof_redis.kill()
        killed_ms = int(time.time() * 1000)
        await asyncio.sleep(DOWN_S / 2)
        unready = {n: (await group.readyz(n))[0] for n in group.workers}
        assert all(code == 503 for code in unready.values()), f"/readyz while Redis is down: {unready}"
        await asyncio.sleep(DOWN_S / 2)
        aof_redis.restart()
        restarted_ms = int(time.time() * 1000)
        ready_s = max(await asyncio.gather(*(group.wait_ready(w) for w in group.workers.values())))
        hold.set()
        await sending
        client = aioredis.Redis.from_url(aof_redis.url)
        try:
            out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, client, group)
        finally:
            await client.aclose()
    first = first_decision_after(out.decisions, set(range(PARTITIONS)), restarted_ms)
    assert first is not None
    record(artifacts_dir, {"test": "kill_redis", "down_s": round((restarted_ms - killed_ms) / 1000, 2),
                           "workers_ready_after_restart_s": round(ready_s, 2),
                           "restart_to_first_decision_s": round((first - restarted_ms) / 1000, 2),
                           "longest_decision_pause_s": round(longest_pause(out.decisions, killed_ms - 2000,
                                                                           first + 2000) / 1000, 2),
                           **out.summary})
