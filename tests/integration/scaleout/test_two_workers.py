"""Two stock workers in one consumer group share the orders partitions: one writer per SKU, exact stock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.integration.scaleout.helpers import (
    burst_with_workers,
    check_ownership,
    check_sales,
    measurement,
    multi_burst,
    partition_of,
    record,
    skus_one_per_partition,
    text,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
ATTEMPTS_PER_SALE = 10_000  # 4 sales → 40k distinct attempts, plus ~5% exact duplicate sends


@pytest.mark.parametrize("workers", [2, 1])
async def test_burst_split_over_workers(broker: Broker, worker_env: dict[str, str], topics: dict[str, str],
                                        topic_prefix: str, redis_client: aioredis.Redis, tmp_path: Path,
                                        artifacts_dir: Path, workers: int) -> None:
    assert worker_env["FLASHSALE_PARTITIONS"] == str(PARTITIONS)
    skus = skus_one_per_partition(PARTITIONS)
    b = multi_burst({f"s{i}": sku for i, sku in enumerate(skus)}, ATTEMPTS_PER_SALE, int(time.time() * 1000))

    out = await burst_with_workers(worker_env, workers, tmp_path, broker.bootstrap, topic_prefix, b, PARTITIONS)

    async def sale_state(sale_id: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in (await redis_client.hgetall(rk.sale(sale_id))).items()}

    async def read_hash(key: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in (await redis_client.hgetall(key)).items()}

    states = await check_sales(b, out.decisions, sale_state, read_hash)
    assert len(out.assignment) == workers and all(out.assignment), "every worker got partitions"
    check_ownership(out, b, states, PARTITIONS)

    # The records really landed where the SKU hash says (the ownership check relies on it).
    raw = await read_topic(broker.bootstrap, TopicNames(topic_prefix).orders, lambda xs: False, timeout=3, raw=True)
    seen = {(m.key.decode(), m.partition) for m in raw}
    assert seen == {(sku, partition_of(sku.encode(), PARTITIONS)) for sku in skus}

    record(artifacts_dir, {"test": "two_workers", "redis": "single", "workers": workers, **measurement(out, b)})
