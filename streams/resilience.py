"""Run a batch handler so that nothing is dropped silently.

Redis or broker outages are retried with backoff (the batch is idempotent, the stream waits);
any other exception is narrowed to the records that cause it, which go to the dead-letter
topic with reason ``handler_error`` while the rest are processed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.codec import BadItem, decode_record, encode_event
from streams.emit import Outbound, Record, SendFn, flush
from streams.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# Faust wraps a failed send in ProducerSendError: output records are small enough by construction
# (emit.OUTPUT_MAX_BYTES, cut dead letters), so a failed send is the broker's trouble: wait and retry.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, KafkaError, ConnectionError, OSError, asyncio.TimeoutError,
             ProducerSendError)
# Short enough that decisions resume well within 2 s of a fault ending (backoff + one Redis timeout).
MAX_BACKOFF_S = 0.5
Handler = Callable[[Sequence[Record]], Awaitable[None]]


async def _retrying(handle: Handler, records: Sequence[Record], metrics: WorkerMetrics, agent: str) -> None:
    delay = 0.05
    while True:
        try:
            await handle(records)
            return
        except TRANSIENT as exc:
            metrics.redis_errors.labels(f"{agent}_batch").inc()
            logger.warning("%s: transient failure (%s: %s); retrying in %.2fs", agent, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


async def process(handle: Handler, records: Sequence[Record], send: SendFn, metrics: WorkerMetrics,
                  agent: str, dead_letter: bool = True) -> None:
    """Apply ``records``; ``dead_letter=False`` for an agent that does not own its topic's bad input
    (another agent on the same topic dead-letters it), so each bad record is routed once."""
    try:
        await _retrying(handle, records, metrics, agent)
        return
    except Exception:
        metrics.handler_errors.labels(agent).inc()
        logger.exception("%s: batch of %d records failed; narrowing to the failing records", agent, len(records))
    for rec in records:
        try:
            await _retrying(handle, [rec], metrics, agent)
        except Exception as exc:
            await _per_event(handle, rec, exc, send, metrics, agent, dead_letter)


async def _per_event(handle: Handler, rec: Record, exc: Exception, send: SendFn, metrics: WorkerMetrics,
                     agent: str, dead_letter: bool) -> None:
    """A record failed: apply its valid events one by one and dead-letter only those that fail
    (reason handler_error); its undecodable items keep their own reasons. Valid neighbours of a
    poisonous event are never lost."""
    decoded = decode_record(rec.value)
    failed: list[BadItem] = list(decoded.errors)  # the failed pass sent nothing, so its bad items are ours
    for i, event in enumerate(decoded.events):
        single = Record(rec.topic, rec.partition, rec.offset, encode_event(event), first_index=i,
                        timestamp_ms=rec.timestamp_ms, signature_ok=rec.signature_ok)
        try:
            await _retrying(handle, [single], metrics, agent)
        except Exception as err:
            failed.append(BadItem(i, "handler_error", f"{type(err).__name__}: {err}"[:500], single.value or b""))
    if not decoded.events and not decoded.errors:
        failed.append(BadItem(-1, "handler_error", f"{type(exc).__name__}: {exc}"[:500], rec.value or b""))
    if not dead_letter:
        if failed:
            logger.warning("%s: %d items failed; the topic's owning agent dead-letters them", agent, len(failed))
        return
    out = Outbound()
    for item in failed:
        out.reject(item, rec, metrics)
    await flush(send, out)


class InjectedFault(RuntimeError):
    """Raised by handlers for events whose id contains FLASHSALE_FAULT_INJECT (chaos testing only)."""


def check_fault(marker: str | None, event_id: str) -> None:
    if marker and marker in event_id:
        raise InjectedFault(f"injected fault for event {event_id}")
