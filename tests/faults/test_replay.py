"""Every record produced twice, and the whole log replayed (mid-sale and after it): at-least-once
delivery at its worst changes nothing — effects stay exactly once, decisions re-emit identically."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.topics import ENGAGEMENT, ORDERS, TopicNames
from tests.faults.checks import probe, read_raw, record
from tests.faults.scenario import verify, wait_answers
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.worker_group import PARTITIONS

pytestmark = pytest.mark.faults

ATTEMPTS = 10_000  # every record twice, then the whole log twice more: ~5,000 records replayed
ALLOTMENT = 750  # sells out as the 1,500 of a 20,000-attempt sale did
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


async def replay_log(traffic: Traffic, bootstrap: str, prefix: str) -> int:
    """Send every record of the orders and engagement topics once more, in log order; every bad
    item in them is injected once more (a new offset: a new dead letter)."""
    names = TopicNames(prefix)
    sent = 0
    for logical in (ORDERS, ENGAGEMENT) if traffic.with_engagement else (ORDERS,):
        records = await read_raw(bootstrap, names.name(logical))
        await traffic.send([(logical, k or b"", v) for k, v in records], copies=1)
        sent += len(records)
    for key in traffic.ledger.bad:
        traffic.ledger.bad[key] *= 2
    return sent


async def snapshot(client: aioredis.Redis, sale_ids: list[str]) -> dict[str, Any]:
    out = {}
    for s in sale_ids:
        out[s] = (await client.hgetall(rk.sale(s)), await client.hgetall(rk.sale_orders(s)),
                  await client.hgetall(rk.sale_users(s)))
    return out


async def test_duplicate_produce_and_replay(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis,
                                            topic_prefix: str, group_factory: Any, artifacts_dir: Path) -> None:
    orders = TopicNames(topic_prefix).orders
    group = group_factory()
    await group.start("a", "b")
    await group.wait_split(orders)
    sales = make_sales(PARTITIONS, allotment=ALLOTMENT)
    main = [s.sale_id for s in sales if not s.probe]
    hold = asyncio.Event()
    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=2000, bad=LIGHT_BAD,
                       duplicate_produce=True, hold=hold, hold_fraction=0.5, seed=5) as traffic:
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        await traffic.reached(0.5)  # the producer pauses here: replay everything so far, mid-sale
        mid = await replay_log(traffic, broker.bootstrap, topic_prefix)
        hold.set()
        await sending

        await wait_answers(broker.bootstrap, topic_prefix, traffic)
        await probe(traffic, rc, sales, "before-replay")
        before = await snapshot(rc, main)
        end = await replay_log(traffic, broker.bootstrap, topic_prefix)
        await traffic.engagement_barrier("after-replay", PARTITIONS)
        await probe(traffic, rc, sales, "after-replay")  # behind the replay on every orders partition
        assert await snapshot(rc, main) == before, "the replay changed the stock, the orders or the users"
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group)

    re_emitted = len(out.decisions) - len({(i.value["event_id"]) for i in out.decisions})
    record(artifacts_dir, {"test": "duplicate_produce_and_replay", "replayed_mid_sale": mid,
                           "replayed_after": end, "re_emitted_decisions": re_emitted, **out.summary})
