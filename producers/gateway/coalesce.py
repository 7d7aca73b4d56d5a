"""Order coalescing: concurrent orders with one partition key (SKU) share one batched Kafka record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from producers.sdk import Prepared, Publisher, PublishError, Record, record_of
from schemas.topics import partition_key

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    """The record being gathered for one (topic, key): its events' bytes and a future per waiting order
    (one each, not one shared: an order whose request goes away cancels only its own)."""

    topic: str
    key: bytes
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    sent: bool = False
    size: int = 1  # the brackets of the array, less the comma the first event does not need
    timer: asyncio.TimerHandle | None = None


class OrderCoalescer:
    """``publish`` returns once the record holding the event is acknowledged, or raises PublishError
    for every event of a record the broker did not take (so a failure fails exactly those orders).

    The first event for a key opens a record and a timer of ``window_s``; events for the same key that
    arrive before it fires join the record, until it holds ``max_events`` events or ``max_bytes`` bytes,
    which sends it at once. However clients arrive (one order per HTTP request), the worker sees
    batched envelopes, and under load the batches grow by themselves: the more concurrent orders, the
    more share a record. ``max_events`` = 1 turns coalescing off (one record per order)."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        window_s: float,
        max_events: int,
        max_bytes: int,
        on_record: Callable[[int], None] | None = None,
    ) -> None:
        self._publisher = publisher
        self._window_s = window_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._on_record = on_record  # called with the record's event count once the broker acked it
        self._pending: dict[tuple[str, bytes], _Pending] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, item: Prepared) -> None:
        topic = self._publisher.names.for_event(item.event)
        key = partition_key(item.event)
        batch = self._pending.get((topic, key))
        if batch is not None and batch.size + len(item.raw) + 1 > self._max_bytes:
            self._flush(batch)  # this event would overflow it: it starts the next record
            batch = None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = _Pending(topic, key)
            self._pending[(topic, key)] = batch
            if self._max_events > 1:
                batch.timer = loop.call_later(self._window_s, self._flush, batch)
        fut: asyncio.Future[None] = loop.create_future()
        batch.waiters.append(fut)
        batch.raws.append(item.raw)
        batch.size += len(item.raw) + 1
        if len(batch.raws) >= self._max_events:
            self._flush(batch)
        await fut

    def _flush(self, batch: _Pending) -> None:
        if self._pending.get((batch.topic, batch.key)) is batch:
            del self._pending[(batch.topic, batch.key)]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.raws or batch.sent:
            return
        batch.sent = True
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Pending) -> None:
        record: Record = record_of(batch.topic, batch.key, batch.raws)
        try:
            await self._publisher.send_records([record])
        except PublishError as exc:
            _settle(batch, exc)
            return
        except asyncio.CancelledError:  # stopped at shutdown: the orders are answered 503, never left hanging
            _settle(batch, PublishError("the gateway stopped before Kafka acknowledged the record"))
            raise
        except Exception as exc:  # noqa: BLE001 - a producer in a bad state: its orders get 503, not a hang
            logger.exception("publishing a record of %d orders failed", len(batch.raws))
            _settle(batch, PublishError(f"publishing failed: {exc!r}"))
            return
        if self._on_record is not None:
            self._on_record(record.count)
        _settle(batch, None)

    async def close(self) -> None:
        """Send what is gathered now and wait for every record in flight (before the producer stops)."""
        for batch in list(self._pending.values()):
            self._flush(batch)
        while self._sending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._sending, return_exceptions=True)


def _settle(batch: _Pending, exc: BaseException | None) -> None:
    for fut in batch.waiters:
        if fut.done():  # its request went away
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
            fut.exception()  # seen here: no "never retrieved" warning if its request goes away meanwhile
