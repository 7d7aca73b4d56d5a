"""Small real-Kafka helpers for tests: produce raw records, read topics without a consumer group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import encode_batch
from schemas.events import Event
from schemas.topics import TopicNames, partition_key


async def produce_events(bootstrap: str, prefix: str, events: Iterable[Event], batch: int = 500) -> int:
    """Publish events as batched records (one JSON array per key run), in order; returns records sent."""
    names = TopicNames(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        run: list[Event] = []
        futs = []

        async def send_run() -> None:
            nonlocal sent
            if run:
                # stamped with the first event's time, as a trusted producer backfilling a stream would:
                # the pipeline's clock is the record timestamp, and these tests script event times
                futs.append(await producer.send(names.for_event(run[0]), encode_batch(run), key=partition_key(run[0]),
                                                timestamp_ms=run[0].ts))
                sent += 1
                run.clear()

        for ev in events:
            if run and (len(run) >= batch or partition_key(ev) != partition_key(run[0])
                        or names.for_event(ev) != names.for_event(run[0])):
                await send_run()
            run.append(ev)
        await send_run()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return sent


async def produce_raw(bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout: float = 60.0,
                     raw: bool = False) -> list[Any]:
    """Read a topic from the beginning (all partitions, no group) until ``until(items)`` or timeout.
    Items are decoded JSON values (batches flattened) or, with raw, the aiokafka messages."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                                auto_offset_reset="earliest")
    await consumer.start()
    items: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - topic may be new
                await asyncio.sleep(0.1)
        if not parts:
            return items
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline and not until(items):
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for msgs in batch.values():
                for m in msgs:
                    if raw:
                        items.append(m)
                    else:
                        obj = orjson.loads(m.value)
                        items.extend(obj if isinstance(obj, list) else [obj])
    finally:
        await consumer.stop()
    return items
