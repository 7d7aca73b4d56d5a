"""``flashsale up``'s narration reads the sales the real stock script wrote (real redis-server, no Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from flashsale.narrate import Narrator, read_sales
from schemas.codec import encode_batch
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import StockStore
from tests.harness.redis_server import RedisServer
from tests.integration.stock.helpers import T0, order, sale_opened

pytestmark = pytest.mark.integration


async def _sink(topic: str, key: bytes, value: bytes) -> Any:
    fut: Any = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


async def test_narration_of_a_sale_that_sells_out(redis_client: aioredis.Redis, redis_server: RedisServer) -> None:
    metrics = WorkerMetrics()
    now = {"t": T0 + 1000}
    svc = StockService(StockStore(redis_client, metrics), metrics, _sink, clock=lambda: now["t"])
    await svc.handle([Record("orders", 0, 0, encode_batch([sale_opened(allotment=3, limit=1, price=1990)]),
                             timestamp_ms=T0 + 500)])
    reader = redis.Redis.from_url(redis_server.url)
    try:
        narrator = Narrator(progress_every_s=10)
        assert narrator.observe(T0 + 1000, read_sales(reader)) == [
            "sale s1 is live: 3 units at ¥19.90, 0 sold"]
        burst = [order(f"o{i}", f"u{i}", T0 + 2000 + i, price=1990) for i in range(5)]
        await svc.handle([Record("orders", 0, 1, encode_batch(burst), timestamp_ms=T0 + 2000)])
        lines = narrator.observe(T0 + 3000, read_sales(reader))
        # sold out at the record time of the burst (T0 + 2 s), 2 s after the sale's start
        assert lines == ["sale s1 sold out in 2.0 s: 0 sold, 3 reserved, 5 attempts"]
    finally:
        reader.close()
