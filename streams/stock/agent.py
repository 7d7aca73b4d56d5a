"""Stock agent: decides order attempts per batch; a timer releases expired reservations.

A batch's events are acked only after its Redis apply and the broker's acknowledgement of every
output send (``resilience.process`` returns only then). Faust's ``take_events`` acks the events of
the current batch in its ``finally`` whatever happened, so a SIGTERM or an agent restart in the middle
of a batch acked work that was never done, and once the counters agent on the same topic acked its
copy, the offset was committed (at-most-once). ``noack_take`` leaves the acks to us: a stopped batch
is finished within ``FLASHSALE_SHUTDOWN_WAIT_S`` or left unacked, so it is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from schemas.topics import ORDERS
from streams.emit import Record, record_time_ms
from streams.pipeline import Pipeline
from streams.resilience import TRANSIENT, process
from streams.stock.service import StockService
from streams.stock.store import StockStore

logger = logging.getLogger(__name__)


def owned_orders_partitions(p: Pipeline) -> set[int] | None:
    """Partitions of the orders topic assigned to this worker now; None if the consumer is not
    running (then the sweeper walks every active sale). Empty during a rebalance: sweeping waits."""
    try:
        assignment = p.app.consumer.assignment()
    except Exception:  # consumer not started or being torn down
        return None
    return {tp.partition for tp in assignment if tp.topic == p.names.orders}


def register(p: Pipeline) -> None:
    holder: dict[str, StockService] = {}

    def service() -> StockService:
        # Created on first use, inside the worker's running loop (no I/O at import or build time).
        if "svc" not in holder:
            holder["svc"] = StockService(StockStore(p.redis.main(), p.metrics), p.metrics, p.send,
                                         max_record_bytes=p.settings.max_record_bytes,
                                         fault_marker=p.settings.fault_inject,
                                         owned_partitions=lambda: owned_orders_partitions(p))
        return holder["svc"]

    @p.app.agent(p.orders, name="flashsale.stock", concurrency=1)
    async def stock(stream: Any) -> None:
        async for events in stream.noack_take(p.settings.batch_max, within=p.settings.batch_within_s):
            records = [Record(ORDERS, e.message.partition, e.message.offset, e.value,
                              timestamp_ms=record_time_ms(e.message)) for e in events]
            await run_then_ack(process(service().handle, records, p.send, p.metrics, "stock"), events, stream,
                               p.settings.shutdown_wait_s)

    @p.app.timer(interval=p.settings.sweep_interval_s, name="flashsale.stock_sweep")
    async def sweep() -> None:
        try:
            await service().sweep()
        except TRANSIENT as exc:
            p.metrics.redis_errors.labels("stock_sweep").inc()
            logger.warning("reservation sweep failed (%s); next tick retries", exc)
        except Exception:
            p.metrics.handler_errors.labels("stock_sweep").inc()
            logger.exception("reservation sweep failed")


async def run_then_ack(work: Awaitable[None], events: Sequence[Any], stream: Any, shutdown_wait_s: float) -> None:
    """Run one batch's work, then ack its events. Cancelled meanwhile (SIGTERM, agent stop): let the
    work finish for up to ``shutdown_wait_s`` and ack only if it did; otherwise cancel it and ack
    nothing, so the batch's offsets are never committed and the records are delivered again (every
    effect is idempotent). Acks happen here and nowhere else, so nothing unfinished is ever acked."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        done = await _finish(task, shutdown_wait_s)
        if done:
            await _ack(events, stream)
        else:
            logger.warning("stock: stopping with a batch of %d records unfinished; left unacked, it is "
                           "delivered again", len(events))
        raise
    await _ack(events, stream)


async def _finish(task: asyncio.Future[None], wait_s: float) -> bool:
    """Whether ``task`` completed successfully within ``wait_s``; if not it is cancelled and awaited."""
    try:
        await asyncio.wait_for(asyncio.shield(task), wait_s)
        return True
    except BaseException:  # timed out, failed or cancelled again: the batch stays unacked
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: S110 - its outcome no longer matters: nothing is acked
            pass
        return False


async def _ack(events: Sequence[Any], stream: Any) -> None:
    for event in events:
        await stream.ack(event)
