"""Counter agents: room engagement, order-side room/sale counters, and accepted-order rates.

Each agent overlaps its two halves: while chunk k is in Redis, chunk k+1 is decoded and
grouped (pure CPU). Chunks are applied strictly in order, and a chunk's events are acked only
after its Redis writes, so offsets never run ahead of the state (at-least-once holds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from schemas.topics import DECISIONS, ENGAGEMENT, ORDERS
from streams.batching import records_of, value_bytes
from streams.counters.params import CounterParams
from streams.counters.service import CountersService, Prepared, spike_configs
from streams.counters.store import CountersStore
from streams.emit import Record
from streams.pipeline import Pipeline
from streams.resilience import process

logger = logging.getLogger(__name__)

NAMES = {ENGAGEMENT: "engagement", ORDERS: "orders", DECISIONS: "decisions"}
CHUNK_BYTES = 1 << 20  # about 7,000 events of JSON


def chunks(events: Sequence[Any], max_bytes: int = CHUNK_BYTES) -> list[Sequence[Any]]:
    """Split a consumed batch into runs of at most ``max_bytes`` of record values (at least one
    event each; a coalesced event is never split), so decoding one chunk never blocks the loop for
    long and overlaps the Redis work of the chunk before."""
    out: list[Sequence[Any]] = []
    start = size = 0
    for i, e in enumerate(events):
        n = value_bytes(e)
        if size and size + n > max_bytes:
            out.append(events[start:i])
            start, size = i, 0
        size += n
    if start < len(events):
        out.append(events[start:])
    return out


def register(p: Pipeline) -> None:
    params = CounterParams.from_settings(p.settings)
    lookback = max(c.lookback_s for c in spike_configs(params))
    holder: dict[str, Any] = {}
    stock_absent = "stock" not in getattr(p.settings, "agents", ("stock",))

    def service(topic: str) -> CountersService:
        # Created on first use, inside the worker's running loop (no I/O at import or build time).
        if topic not in holder:
            if "store" not in holder:
                holder["store"] = CountersStore(p.redis.main(), params, p.metrics, lookback_s=lookback)
            holder[topic] = CountersService(holder["store"], params, p.metrics, p.send, topic,
                                            max_record_bytes=p.settings.max_record_bytes,
                                            owns_orders_input=stock_absent,
                                            fault_marker=getattr(p.settings, "fault_inject", None))
        svc: CountersService = holder[topic]
        return svc

    async def finish(svc: CountersService, records: Sequence[Record], prepared: Prepared | None,
                     events: Sequence[Any], stream: Any) -> None:
        try:
            if prepared is None:
                raise RuntimeError("batch could not be prepared")
            await svc.apply(prepared)
        except Exception as exc:  # the shared path retries transient failures, then narrows to records
            logger.info("%s: batch failed (%s); retrying through the resilience path", svc.agent, exc)
            await process(svc.handle, records, p.send, p.metrics, svc.agent, dead_letter=svc.owns_input)
        for event in events:
            await stream.ack(event)

    def agent(topic: str, channel: Any) -> None:
        name = f"flashsale.counters_{NAMES[topic]}"

        # order-decisions is the workers' output: with a key, only records a worker signed count
        verify = p.output_keys.verify if topic == DECISIONS and p.output_keys is not None else None

        async def run(stream: Any) -> None:
            messages = p.metrics.consumed_messages.labels(name.rsplit(".", 1)[-1])
            consumed = p.metrics.consumed_records.labels(name.rsplit(".", 1)[-1])
            inflight: asyncio.Task[None] | None = None
            try:
                async for batch in stream.noack_take(p.settings.take_messages, within=p.settings.batch_within_s):
                    svc = service(topic)
                    messages.inc(len(batch))
                    for events in chunks(batch):
                        records = records_of(events, topic, verify)
                        consumed.inc(len(records))
                        prepared: Prepared | None
                        try:
                            prepared = svc.prepare(records)
                        except Exception:  # e.g. injected faults: finish() narrows the batch down
                            prepared = None
                        if inflight is not None:
                            await inflight
                        inflight = asyncio.create_task(finish(svc, records, prepared, events, stream))
                        # let it send its pipeline before this loop decodes the next chunk
                        await asyncio.sleep(0)
            finally:
                if inflight is not None and not inflight.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(inflight), p.settings.shutdown_wait_s)
                    except BaseException:  # stopping: unacked events are redelivered, effects are idempotent
                        inflight.cancel()

        run.__name__ = run.__qualname__ = name.replace(".", "_")
        p.app.agent(channel, name=name, concurrency=1)(run)

    for topic, channel in ((ENGAGEMENT, p.engagement), (ORDERS, p.orders), (DECISIONS, p.decisions)):
        agent(topic, channel)
