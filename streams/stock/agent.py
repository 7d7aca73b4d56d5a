"""Stock agent: decides order attempts per batch; a timer releases expired reservations.

A batch's events are acked only after its Redis apply and the broker's acknowledgement of every
output send (``resilience.process`` returns only then). Faust's ``take_events`` acks the events of
the current batch in its ``finally`` whatever happened, so a SIGTERM or an agent restart in the middle
of a batch acked work that was never done, and once the counters agent on the same topic acked its
copy, the offset was committed (at-most-once). ``noack_take`` leaves the acks to us: a stopped batch
is finished within ``FLASHSALE_SHUTDOWN_WAIT_S`` or left unacked, so it is delivered again.

**Overlapped batches.** Up to ``FLASHSALE_BATCHES_IN_FLIGHT`` batches run at once (default 2), so
one batch is decoded and applied while the one before waits for the broker to acknowledge its
decisions. Three rules keep it the same as running them in series:

- *Redis in order*: a batch's stock script calls start only once the batch before has applied its
  whole batch without a script error (or has finished, whatever its path: retries, narrowing to
  records, isolating a sale). So every sale sees its ops in offset order, as in series.
- *Acks in order*: a batch is acked only after it finished and every batch before it was acked; the
  first batch that did not finish (stopped, failed) stops all acking, so nothing after it commits.
- *Stop*: on SIGTERM or an agent stop the batches in flight get ``FLASHSALE_SHUTDOWN_WAIT_S`` to
  finish, in order; those that did are acked, the rest are left unacked and delivered again.

Outputs of a batch are sent after its Redis apply, and the next batch applies only after that, so
decisions for a SKU are still produced in decision order. A retried batch (a broker timeout after
its apply) re-sends its decisions after the next batch's: the same decisions, idempotent replays.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from contextvars import ContextVar
from typing import Any

from schemas.topics import ORDERS
from streams.batching import records_of
from streams.emit import Record
from streams.pipeline import Pipeline
from streams.resilience import TRANSIENT, process
from streams.stock.service import StockService
from streams.stock.store import SaleBatchResult, StockStore

logger = logging.getLogger(__name__)


def owned_orders_partitions(p: Pipeline) -> set[int] | None:
    """Partitions of the orders topic assigned to this worker now; None if the consumer is not
    running (then the sweeper walks every active sale). Empty during a rebalance: sweeping waits."""
    try:
        assignment = p.app.consumer.assignment()
    except Exception:  # consumer not started or being torn down
        return None
    return {tp.partition for tp in assignment if tp.topic == p.names.orders}


class Turn:
    """One batch's place in the order of stock script calls: ``applied`` is set once its whole batch
    was applied without a script error, or it finished; the next batch's calls wait for it."""

    __slots__ = ("prev", "records", "full", "applied")

    def __init__(self, prev: Turn | None, records: Sequence[Record]) -> None:
        self.prev = prev
        self.records = records
        self.full = False  # the handler runs on the whole batch now (not narrowed to a record)
        self.applied = asyncio.Event()

    async def wait_prev(self) -> None:
        prev = self.prev
        if prev is not None:
            await prev.applied.wait()
            self.prev = None  # no chain of finished batches kept alive

    def open(self) -> None:
        self.applied.set()
        self.prev = None


_turn: ContextVar[Turn | None] = ContextVar("stock_turn", default=None)


class OrderedStockStore(StockStore):
    """The stock store whose ``apply`` waits for the turn of the batch it runs for (see the module
    doc); calls outside a batch (none today: the sweeper uses its own scripts) do not wait."""

    async def apply(self, ops_by_sale: dict[str, list[dict[str, Any]]], now_ms: int,
                    partitions: dict[str, int] | None = None) -> dict[str, SaleBatchResult]:
        turn = _turn.get()
        if turn is not None:
            await turn.wait_prev()
        results = await super().apply(ops_by_sale, now_ms, partitions)
        if turn is not None and turn.full and all(r.error is None for r in results.values()):
            turn.open()
        return results


def register(p: Pipeline) -> None:
    holder: dict[str, StockService] = {}

    def service() -> StockService:
        # Created on first use, inside the worker's running loop (no I/O at import or build time).
        if "svc" not in holder:
            holder["svc"] = StockService(OrderedStockStore(p.redis.main(), p.metrics), p.metrics, p.send,
                                         max_record_bytes=p.settings.max_record_bytes,
                                         fault_marker=p.settings.fault_inject,
                                         owned_partitions=lambda: owned_orders_partitions(p))
        return holder["svc"]

    async def run_batch(turn: Turn) -> None:
        _turn.set(turn)  # this task's context: the store finds the batch's turn here

        async def handle(records: Sequence[Record]) -> None:
            turn.full = records is turn.records
            await service().handle(records)

        try:
            await process(handle, turn.records, p.send, p.metrics, "stock")
        finally:
            turn.open()

    @p.app.agent(p.orders, name="flashsale.stock", concurrency=1)
    async def stock(stream: Any) -> None:
        flight = InFlight(stream, p.settings.batches_in_flight, p.settings.shutdown_wait_s)
        last: Turn | None = None
        messages, consumed = p.metrics.consumed_messages.labels("stock"), p.metrics.consumed_records.labels("stock")
        try:
            # an event is one record or, coalesced, a run of a partition's records (streams.transport)
            async for events in stream.noack_take(p.settings.take_messages, within=p.settings.batch_within_s):
                last = Turn(last, records_of(events, ORDERS))
                messages.inc(len(events))
                consumed.inc(len(last.records))
                await flight.add(run_batch(last), events)
        finally:
            await flight.close()

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


class InFlight:
    """Batches running at once (at most ``depth``), acked strictly in order, each as soon as it
    finished and every batch before it was acked (see the module doc)."""

    def __init__(self, stream: Any, depth: int, shutdown_wait_s: float) -> None:
        self.stream = stream
        self.depth = max(1, depth)
        self.shutdown_wait_s = shutdown_wait_s
        self.batches: deque[tuple[asyncio.Future[None], Sequence[Any]]] = deque()
        self.failure: BaseException | None = None  # a batch failed: nothing after it is acked
        self.closing = False
        self._lock = asyncio.Lock()
        self._ackers: set[asyncio.Future[None]] = set()

    async def add(self, work: Awaitable[None], events: Sequence[Any]) -> None:
        """Start ``work`` for ``events``; returns once fewer than ``depth`` batches are unacked.
        Cancelled meanwhile (SIGTERM, agent stop): ``close()`` settles what is in flight."""
        if self.failure is not None:
            raise self.failure
        task = asyncio.ensure_future(work)
        self.batches.append((task, events))
        task.add_done_callback(self._kick)  # acks do not wait for the next batch to arrive
        while len(self.batches) >= self.depth:
            await asyncio.shield(self.batches[0][0])  # a failure propagates (process() raises only if cancelled)
            await self._ack_done()
        if self.failure is not None:
            raise self.failure

    def _kick(self, _: asyncio.Future[None]) -> None:
        if not self.closing:
            acker = asyncio.ensure_future(self._ack_done())
            self._ackers.add(acker)
            acker.add_done_callback(self._ackers.discard)

    async def _ack_done(self) -> None:
        async with self._lock:
            while self.failure is None and self.batches and self.batches[0][0].done():
                task, events = self.batches.popleft()
                if task.cancelled():
                    self.failure = asyncio.CancelledError()
                elif (exc := task.exception()) is not None:
                    self.failure = exc
                else:
                    await _ack(events, self.stream)

    async def close(self) -> None:
        """Let the batches in flight finish within ``shutdown_wait_s`` (in order) and ack those that
        did, up to the first that did not; cancel and leave unacked the rest (delivered again)."""
        self.closing = True
        async with self._lock:
            left = len(self.batches)
            deadline = asyncio.get_running_loop().time() + self.shutdown_wait_s
            unfinished = 0
            while self.batches:
                task, events = self.batches.popleft()
                done = await _finish(task, max(0.0, deadline - asyncio.get_running_loop().time()))
                if done and self.failure is None:
                    await _ack(events, self.stream)
                else:
                    self.failure = self.failure or asyncio.CancelledError()
                    unfinished += len(events)
        if unfinished:
            logger.warning("stock: stopping with %d unfinished messages of %d batches in flight; left unacked, "
                           "they are delivered again", unfinished, left)


async def run_then_ack(work: Awaitable[None], events: Sequence[Any], stream: Any, shutdown_wait_s: float) -> None:
    """Run one batch's work, then ack its events (one batch in flight). Cancelled meanwhile (SIGTERM,
    agent stop): let the work finish for up to ``shutdown_wait_s`` and ack only if it did; otherwise
    cancel it and ack nothing, so the batch's offsets are never committed and the records are
    delivered again (every effect is idempotent)."""
    flight = InFlight(stream, 1, shutdown_wait_s)
    try:
        await flight.add(work, events)
    finally:
        await flight.close()


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

