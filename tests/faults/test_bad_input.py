"""Bad input mid-sale: malformed JSON, unknown types, unsupported versions, oversized records and
events whose handler raises. Each lands in the dead-letter topic with its reason; nothing valid
next to it is lost; nothing is dropped silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.topics import TopicNames
from tests.faults.checks import record
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.worker_group import PARTITIONS

pytestmark = pytest.mark.faults

ATTEMPTS = 10_000  # at 2,000/s: a 5 s sale, every kind of bad input in it at least 6 times
ALLOTMENT = 750  # sells out as the 1,500 of a 20,000-attempt sale did
MAX_RECORD_BYTES = 65_536
MARKER = "chaos"
MIX = BadMix(malformed=0.01, unknown_type=0.0025, bad_version=0.0025, fault=0.001, oversized=6,
             oversized_bytes=MAX_RECORD_BYTES + 4096, marker=MARKER)


async def test_bad_input_mid_sale(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis, topic_prefix: str,
                                  group_factory: Any, artifacts_dir: Path) -> None:
    group = group_factory(FLASHSALE_FAULT_INJECT=MARKER, FLASHSALE_MAX_RECORD_BYTES=str(MAX_RECORD_BYTES))
    await group.start("a", "b")
    await group.wait_split(TopicNames(topic_prefix).orders)
    sales = make_sales(PARTITIONS, allotment=ALLOTMENT)
    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=2000, bad=MIX, seed=6) as traffic:
        await traffic.open_sales()
        await traffic.run()
        ledger = traffic.ledger
        assert ledger.bad[("orders", "handler_error")] == ATTEMPTS * MIX.fault
        assert ledger.bad[("orders", "too_large")] == MIX.oversized
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group,
                           max_record_bytes=MAX_RECORD_BYTES)
    record(artifacts_dir, {"test": "bad_input", "dead_attempts": sum(len(v) for v in ledger.dead_attempts.values()),
                           **out.summary})
