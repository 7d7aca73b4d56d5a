"""Reference point: a plain aiokafka consume loop with one Lua round trip per batch (no Faust).

It runs the same StockService as the Faust agent, so the difference to the pipeline is the
stream framework's cost. ``python -m bench.ceiling_loop`` with FLASHSALE_* settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kernel.redis import connect
from schemas.topics import ORDERS, TopicNames
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.settings import get_settings
from streams.stock.service import StockService
from streams.stock.store import StockStore

logger = logging.getLogger(__name__)


async def run() -> None:
    s = get_settings()
    names = TopicNames(s.topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(
        names.orders,
        bootstrap_servers=s.bootstrap,
        group_id=s.app_id + "-ceiling",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        session_timeout_ms=int(s.session_timeout_s * 1000),
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=8 << 20,
    )
    await producer.start()
    await consumer.start()
    metrics = WorkerMetrics()

    async def send(logical: str, key: bytes, value: bytes) -> Any:
        return await producer.send(names.name(logical), value, key=key)

    svc = StockService(StockStore(connect(s.redis_url), metrics), metrics, send)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=20, max_records=s.batch_max)
            records = [Record(ORDERS, m.partition, m.offset, m.value) for msgs in batch.values() for m in msgs]
            if records:
                await svc.handle(records)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(run())
