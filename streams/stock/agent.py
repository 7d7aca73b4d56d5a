"""Stock agent: decides order attempts per batch; a timer releases expired reservations."""

from __future__ import annotations

import logging
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
        async for events in stream.take_events(p.settings.batch_max, within=p.settings.batch_within_s):
            records = [Record(ORDERS, e.message.partition, e.message.offset, e.value,
                              timestamp_ms=record_time_ms(e.message)) for e in events]
            await process(service().handle, records, p.send, p.metrics, "stock")

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
