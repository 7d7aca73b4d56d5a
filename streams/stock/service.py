"""The stock core's batch handler: decode, one Redis round trip per batch, emit decisions."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from kernel.clock import MAX_CLIENT_SKEW_MS, clamped_time_ms, now_ms, pipeline_time_ms
from schemas.codec import DEFAULT_MAX_RECORD_BYTES, decode_record
from schemas.events import Event
from schemas.topics import DECISIONS, ORDERS
from streams.emit import Outbound, Record, SendFn, bad, flush
from streams.metrics import WorkerMetrics
from streams.resilience import check_fault
from streams.stock.logic import (
    BAD_STATUSES,
    REFUND_REFUSED,
    decision_event,
    outbox_event,
    sale_of,
    stock_changed_event,
    to_op,
)
from streams.stock.store import SaleBatchResult, StockStore

logger = logging.getLogger(__name__)


class StockService:
    """Decides order attempts for a batch of records from the orders topic."""

    def __init__(self, store: StockStore, metrics: WorkerMetrics, send: SendFn,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, clock: Callable[[], int] = now_ms,
                 fault_marker: str | None = None,
                 owned_partitions: Callable[[], set[int] | None] | None = None) -> None:
        """``owned_partitions`` returns the orders partitions this worker owns now (None: unknown);
        without it the sweeper walks every active sale (one worker, or tests)."""
        self.store = store
        self.owned_partitions = owned_partitions
        self._partition_of: dict[str, int] = {}  # sale → orders partition already recorded in Redis
        self.fault_marker = fault_marker
        self.metrics = metrics
        self.send = send
        self.max_record_bytes = max_record_bytes
        self.clock = clock
        self._active_gauges: set[str] = set()

    async def handle(self, records: Sequence[Record]) -> None:
        out = Outbound()
        ops: dict[str, list[dict[str, Any]]] = defaultdict(list)
        sources: dict[str, list[tuple[Event, Record]]] = defaultdict(list)
        consumed: Counter[tuple[str, str]] = Counter()  # metrics once per batch, not per event
        moved: dict[str, int] = {}  # sales seen on a partition not yet recorded
        skewed = 0  # events whose own time strays from their record's
        for rec in records:
            decoded = decode_record(rec.value, self.max_record_bytes)
            for bad_item in decoded.errors:
                out.reject(bad_item, rec, self.metrics)
            for event in decoded.events:
                check_fault(self.fault_marker, event.event_id)
                consumed[rec.topic, event.type] += 1
                now = pipeline_time_ms(event.ts, rec.timestamp_ms)
                if abs(event.ts - now) > MAX_CLIENT_SKEW_MS:
                    skewed += 1
                op = to_op(event, now)
                sale_id = sale_of(event)
                if op is None or sale_id is None:
                    out.reject(bad(0, "wrong_topic", f"{event.type} does not belong on the orders topic",
                                   orjson.dumps(event.to_dict())), rec, self.metrics)
                    continue
                ops[sale_id].append(op)
                sources[sale_id].append((event, rec))
                if self._partition_of.get(sale_id) != rec.partition:
                    moved[sale_id] = rec.partition
        for (topic, type_), n in consumed.items():
            self.metrics.events_consumed.labels(topic, type_).inc(n)
        if skewed:
            self.metrics.client_time_clamped.labels(ORDERS).inc(skewed)
        if ops:
            # Only sales that exist get a partition recorded: ids of sales never opened must not grow
            # the partition hash or this map (both would be unbounded under crafted ids).
            now_known = {s: p for s, p in moved.items()
                         if s in self._partition_of or any(o["op"] == "open" for o in ops[s])}
            results = await self.store.apply(ops, self.clock(), now_known)
            self._partition_of.update(now_known)
            existing = {s: p for s, p in moved.items() if s not in now_known and _sale_exists(results[s].results)}
            if existing:  # a sale opened before this worker saw it (a restart, a rebalance): once per sale
                await self.store.record_partitions(existing)
                self._partition_of.update(existing)
            for sale_id, res in list(results.items()):
                if res.error is not None:
                    isolated = await self._isolate(sale_id, ops[sale_id], sources[sale_id], res.error, out)
                    isolated.outbox[:0] = res.outbox  # what the failed call leased is sent, not left to expire
                    results[sale_id] = res = isolated
                self._collect(res, sources[sale_id], out)
            done = self.clock()
            latency = self.metrics.processing_latency.labels("stock")
            for sale_srcs in sources.values():
                for event, _ in sale_srcs:
                    latency.observe(max(0.0, (done - event.ts) / 1000))
            self.metrics.batch_size.labels("stock").observe(sum(len(v) for v in ops.values()))
        outbox = {s: r.outbox for s, r in results.items()} if ops else {}
        for items in outbox.values():
            for item in items:
                self._add_outbox(item, out)
        await flush(self.send, out, self.max_record_bytes)
        await self.store.ack_outbox(outbox)

    async def _isolate(self, sale_id: str, ops: list[dict[str, Any]], srcs: list[tuple[Event, Record]],
                       error: Exception, out: Outbound) -> SaleBatchResult:
        """A script failed for this sale: apply its ops one by one (idempotent) and dead-letter the
        ones that fail, so one poisonous event cannot block or drop the others."""
        logger.warning("stock script failed for sale %s (%s); retrying its %d ops one by one",
                       sale_id, error, len(ops))
        self.metrics.handler_errors.labels("stock").inc()
        results: list[dict[str, Any]] = []
        outbox: list[bytes] = []
        for op, (event, rec) in zip(ops, srcs, strict=True):
            single = (await self.store.apply({sale_id: [op]}, self.clock()))[sale_id]
            if single.results is None:
                self._reject_failed(event, rec, single.error, out)
                results.append({"op": "failed"})
            else:
                results.extend(single.results)
                outbox.extend(single.outbox)
        return SaleBatchResult(results, None, outbox)

    def _reject_failed(self, event: Event, rec: Record, error: Any, out: Outbound) -> None:
        """Dead-letter an event the stock script failed on (handler_error), with the error."""
        out.reject(bad(0, "handler_error", f"stock script failed: {error}", orjson.dumps(event.to_dict())),
                   rec, self.metrics)

    def _collect(self, res: SaleBatchResult, srcs: list[tuple[Event, Record]], out: Outbound) -> None:
        assert res.results is not None
        decided: Counter[tuple[str, str]] = Counter()
        for (event, rec), r in zip(srcs, res.results, strict=True):
            op = r.get("op")
            if op == "place":
                decision = decision_event(event, r, clamped_time_ms(event.ts, rec.timestamp_ms))
                out.add(DECISIONS, decision)
                if not r.get("replay"):
                    decided[r["out"], r.get("r") or ""] += 1
            elif op == "failed":
                continue
            elif op == "error":  # this op raised inside the script; the batch's other ops applied
                logger.warning("stock script failed on %s %s: %s", event.type, event.event_id, r.get("err"))
                self.metrics.handler_errors.labels("stock").inc()
                self._reject_failed(event, rec, r.get("err"), out)
            else:
                status = str(r.get("status"))
                self.metrics.order_updates.labels(op, status).inc()
                if op == "adjust" and status == "adjusted":  # also on a replay: the stored result
                    out.add(DECISIONS, stock_changed_event(event, r))
                if op == "refund" and status in REFUND_REFUSED:
                    out.reject(bad(0, status, f"order.refunded refused: {status.replace('_', ' ')}",
                                   orjson.dumps(event.to_dict())), rec, self.metrics)
                elif status in BAD_STATUSES:
                    out.reject(bad(0, status, f"{event.type} refers to {status.replace('_', ' ')}",
                                   orjson.dumps(event.to_dict())), rec, self.metrics)
        for (outcome, reason), n in decided.items():
            self.metrics.decisions.labels(outcome, reason).inc(n)

    def _add_outbox(self, item: bytes, out: Outbound) -> None:
        event = outbox_event(orjson.loads(item))
        out.add(DECISIONS, event)

    async def sweep(self) -> int:
        """Release due reservations of the active sales this worker owns (every active sale if
        ownership is unknown); emit order.expired; refresh gauges."""
        sales = await self._sales_to_sweep()
        stocks, outbox = await self.store.sweep(sales, self.clock())
        out = Outbound()
        for items in outbox.values():
            for item in items:
                self._add_outbox(item, out)
        for event in out.events.get(DECISIONS, []):
            if event.type == "order.expired":
                self.metrics.reservations_expired.labels(getattr(event.data, "cause", "ttl")).inc()
            elif event.type == "sale.sold_out":
                self.metrics.sales_sold_out.inc()
        await flush(self.send, out, self.max_record_bytes)
        await self.store.ack_outbox(outbox)
        self._gauges(stocks)
        # Only a hint of which sales to try: retire checks again in Redis, after the sends above were
        # acked (this reading predates them; the sale may have been re-opened meanwhile).
        await self.store.retire([s.sale_id for s in stocks if s.status == "closed" and s.pending == 0], self.clock())
        return sum(s.released for s in stocks)

    async def _sales_to_sweep(self) -> list[str]:
        """Active sales on owned partitions, plus those with no recorded partition (swept by every
        worker: the scripts are idempotent, so that costs calls, never a double release)."""
        sales = await self.store.active_sales()
        owned = self.owned_partitions() if self.owned_partitions is not None else None
        if owned is None or not sales:
            return sales
        where = await self.store.sale_partitions(sales)
        return [s for s in sales if s not in where or where[s] in owned]

    def _gauges(self, stocks: list[Any]) -> None:
        m = self.metrics
        seen = set()
        broken = 0
        for s in stocks:
            if not s.consistent:
                broken += 1
                logger.error("stock invariant broken for sale %s: allotted=%d available=%d reserved=%d sold=%d "
                             "refunded=%d", s.sale_id, s.allotted, s.available, s.reserved, s.sold, s.refunded)
            if s.status == "closed" and s.pending == 0:
                continue
            seen.add(s.sale_id)
            m.sale_available.labels(s.sale_id).set(s.available)
            m.sale_reserved.labels(s.sale_id).set(s.reserved)
            m.sale_sold.labels(s.sale_id).set(s.sold)
        for gone in self._active_gauges - seen:
            for g in (m.sale_available, m.sale_reserved, m.sale_sold):
                try:
                    g.remove(gone)
                except KeyError:
                    pass
        self._active_gauges = seen
        m.invariant_violations.set(broken)


_EXISTING_SALE_STATUSES = frozenset({"opened", "updated", "closed", "adjusted", "paid", "cancelled", "late_payment",
                                     "already_paid", "already_released", "not_cancellable", "not_accepted",
                                     "refunded", "already_refunded", "not_paid", "amount_mismatch"})


def _sale_exists(results: Sequence[dict[str, Any]] | None) -> bool:
    """Whether the stock script's answers show the sale exists (an unknown sale answers only
    sale_not_active, duplicate or unknown_order/unknown_sale)."""
    for r in results or ():
        if r.get("status") in _EXISTING_SALE_STATUSES:
            return True
        if r.get("op") == "place" and r.get("r") not in ("sale_not_active", "duplicate"):
            return True
    return False
