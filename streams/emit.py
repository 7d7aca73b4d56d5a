"""Output side shared by agents: send batched records and dead letters, wait for delivery."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_BATCH_ITEMS,
    OUTPUT_MAX_BYTES,
    BadItem,
    dead_letter,
    encode_batch,
)
from schemas.events import Event
from schemas.topics import partition_key
from streams.metrics import WorkerMetrics

# send(logical_topic, key, value) → awaitable resolving when the broker has the record
SendFn = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
CHUNK = 1000
assert CHUNK <= MAX_BATCH_ITEMS


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record, transport-neutral (Faust event or aiokafka message)."""

    topic: str  # logical topic name (orders, engagement, ...)
    partition: int
    offset: int
    value: bytes | None
    first_index: int = 0  # position of the record's first event among the original record's valid events
    # The record's Kafka timestamp (epoch ms): set by the producer (the gateway, the SDK, a principal
    # allowed to write the topic), stable under replay. The pipeline's clock; None when unknown.
    timestamp_ms: int | None = None
    # False for an output record (order-decisions) that carries no valid worker signature while a
    # key is configured: readers drop it (counted), never count it.
    signature_ok: bool = True


def record_time_ms(message: Any) -> int | None:
    """A Faust message's Kafka timestamp in epoch ms (Faust gives seconds as a float)."""
    ts = getattr(message, "timestamp", None)
    return None if ts is None or ts <= 0 else round(ts * 1000)


@dataclass
class Outbound:
    """What one batch produces: output events by logical topic, and dead letters."""

    events: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    dead: list[tuple[str, bytes]] = field(default_factory=list)  # (reason, dead-letter record)

    def add(self, topic: str, event: Event) -> None:
        self.events[topic].append(event)

    def reject(self, item: BadItem, record: Record, metrics: WorkerMetrics) -> None:
        metrics.dead_letters.labels(item.reason).inc()
        self.dead.append((item.reason, dead_letter(item, topic=record.topic, partition=record.partition,
                                                   offset=record.offset, now_ms=int(time.time() * 1000))))


def batches(events: Iterable[Event], max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> list[tuple[bytes, bytes]]:
    """Group events by partition key, preserving order, into (key, JSON array) records of at most
    ``CHUNK`` events and ``max_bytes`` bytes (the consumers' FLASHSALE_MAX_RECORD_BYTES: a larger
    record would be dead-lettered as too_large by the agents that read it)."""
    by_key: dict[bytes, list[Event]] = defaultdict(list)
    for e in events:
        by_key[partition_key(e)].append(e)
    out: list[tuple[bytes, bytes]] = []
    for key, evs in by_key.items():
        for i in range(0, len(evs), CHUNK):
            _fit(key, evs[i:i + CHUNK], max_bytes, out)
    return out


def _fit(key: bytes, evs: list[Event], max_bytes: int, out: list[tuple[bytes, bytes]]) -> None:
    value = encode_batch(evs)
    if len(value) <= max_bytes or len(evs) == 1:
        out.append((key, value))
        return
    half = len(evs) // 2
    _fit(key, evs[:half], max_bytes, out)
    _fit(key, evs[half:], max_bytes, out)


async def flush(send: SendFn, outbound: Outbound, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> int:
    """Send everything and wait until the broker has acknowledged it all; return records sent. Output
    records are split at ``max_bytes`` (what readers accept) or OUTPUT_MAX_BYTES, whichever is less;
    dead letters are small by construction (schemas.codec.dead_letter cuts the raw input)."""
    pending: list[Awaitable[Any]] = []
    for topic, events in outbound.events.items():
        for key, value in batches(events, min(max_bytes, OUTPUT_MAX_BYTES)):
            pending.append(await send(topic, key, value))
    for reason, value in outbound.dead:
        pending.append(await send("dead-letter", reason.encode(), value))
    for fut in pending:
        await fut
    return len(pending)


def bad(index: int, reason: str, detail: str, raw: bytes) -> BadItem:
    return BadItem(index, reason, detail, raw)
