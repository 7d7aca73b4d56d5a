"""The stock core's Redis store: Lua and key names behind a few batch methods."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from kernel.redis import AnyRedis, LuaScript, run_pipeline
from schemas import keys as rk
from streams.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

OUTBOX_LEASE_MS = 10_000
UNKNOWN_SALE_TTL_MS = 86_400_000  # state of a sale id that was never opened lives a day
OUTBOX_BATCH = 1000
SWEEP_BATCH = 2000  # deadlines one sweep script call handles
SWEEP_DRAIN_BATCH = SWEEP_BATCH  # outbox items one sweep round leases (keeps up with the releases)
SWEEP_BUDGET_S = 0.25  # a sweeper tick starts no new round after this (half the default interval)
RETIRE_LEASE_MS = 10_000  # a re-open waits at most this long for a retirement that died half-way


def _sale_keys(sale_id: str) -> list[str]:
    return [rk.sale(sale_id), rk.sale_orders(sale_id), rk.sale_users(sale_id), rk.sale_deadlines(sale_id),
            rk.sale_dups(sale_id), rk.sale_applied(sale_id), rk.sale_outbox(sale_id), rk.sale_ledger(sale_id),
            rk.sale_distributors(sale_id)]


@dataclass(frozen=True, slots=True)
class SaleStock:
    sale_id: str
    released: int
    allotted: int
    available: int
    reserved: int
    sold: int
    status: str
    pending: int
    refunded: int = 0  # units refunded without restock (their goods left): the invariant's fourth term

    @property
    def consistent(self) -> bool:
        return (self.allotted == self.available + self.reserved + self.sold + self.refunded
                and self.available >= 0)


@dataclass(slots=True)
class SaleBatchResult:
    results: list[dict[str, Any]] | None  # one per op, or None if the script failed
    error: Exception | None
    outbox: list[bytes]


class StockStore:
    def __init__(self, client: AnyRedis, metrics: WorkerMetrics, sweep_budget_s: float = SWEEP_BUDGET_S) -> None:
        self.client = client
        self.sweep_budget_s = sweep_budget_s
        self.metrics = metrics
        self.stock = LuaScript("streams.stock", "stock")
        self.sweep_script = LuaScript("streams.stock", "sweep")
        self.drain = LuaScript("streams.stock", "drain")
        self.retire_script = LuaScript("streams.stock", "retire")
        self.scripts = [self.stock, self.sweep_script, self.drain, self.retire_script]

    async def _run(self, op: str, build: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            return await run_pipeline(self.client, self.scripts, build)
        except Exception:
            self.metrics.redis_errors.labels(op).inc()
            raise
        finally:
            self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)

    async def apply(self, ops_by_sale: dict[str, list[dict[str, Any]]], now_ms: int,
                    partitions: dict[str, int] | None = None) -> dict[str, SaleBatchResult]:
        """One round trip: the stock script per sale, then lease of each sale's new outbox items;
        ``partitions`` records the orders partition of sales whose partition is new to the caller."""
        sales = list(ops_by_sale)

        def build(pipe: Any) -> None:
            for sale_id in sales:
                self.stock.queue(pipe, _sale_keys(sale_id),
                                 [orjson.dumps(ops_by_sale[sale_id]), now_ms, UNKNOWN_SALE_TTL_MS])
                self.drain.queue(pipe, [rk.sale_outbox(sale_id)], [now_ms, OUTBOX_LEASE_MS, OUTBOX_BATCH])
            opened = [s for s in sales if any(o["op"] == "open" for o in ops_by_sale[s])]
            if opened:
                pipe.sadd(rk.sales_index(), *opened)
                pipe.sadd(rk.active_sales(), *opened)
                for sale_id in opened:
                    room = next(o["room_id"] for o in ops_by_sale[sale_id] if o["op"] == "open")
                    pipe.sadd(rk.room_sales(room), sale_id)
            if partitions:
                pipe.hset(rk.sale_partitions(), mapping=partitions)

        raw = await self._run("stock_apply", build)
        out: dict[str, SaleBatchResult] = {}
        for i, sale_id in enumerate(sales):
            res, drained = raw[2 * i], raw[2 * i + 1]
            leased = [] if isinstance(drained, Exception) else list(drained)
            if isinstance(res, Exception):
                out[sale_id] = SaleBatchResult(None, res, leased)
            else:
                out[sale_id] = SaleBatchResult(orjson.loads(res), None, leased)
        return out

    async def record_partitions(self, partitions: dict[str, int]) -> None:
        """Remember the orders partition of sales first seen here after they were opened elsewhere."""
        await self._run("stock_partitions", lambda pipe: pipe.hset(rk.sale_partitions(), mapping=partitions))

    async def ack_outbox(self, items_by_sale: dict[str, list[bytes]]) -> None:
        def build(pipe: Any) -> None:
            for sale_id, items in items_by_sale.items():
                if items:
                    pipe.zrem(rk.sale_outbox(sale_id), *items)

        if any(items_by_sale.values()):
            await self._run("outbox_ack", build)

    async def active_sales(self) -> list[str]:
        members = await self.client.smembers(rk.active_sales())  # type: ignore[misc]
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def sale_partitions(self, sale_ids: list[str]) -> dict[str, int]:
        """The recorded orders partition of each sale (sales with none recorded are left out)."""
        if not sale_ids:
            return {}
        values = await self.client.hmget(rk.sale_partitions(), sale_ids)  # type: ignore[misc]
        return {s: int(v) for s, v in zip(sale_ids, values, strict=True) if v is not None}

    async def sweep(self, sale_ids: list[str], now_ms: int) -> tuple[list[SaleStock], dict[str, list[bytes]]]:
        """Release due reservations of each sale and lease its outbox, in rounds of one round trip:
        each script call handles at most SWEEP_BATCH deadlines (Redis is single-threaded), and a
        sale with deadlines still due or a full outbox lease goes round again, so one call works
        off any burst. A new round starts only within ``sweep_budget_s`` of the first: past it the
        rest waits for the next tick (logged, counted in flashsale_sweep_budget_exhausted_total).
        Returns each sale's stock after its last round (``released`` summed over the rounds; a
        sale whose script failed is left out) and every outbox item leased."""
        stocks: dict[str, SaleStock] = {}
        outbox: dict[str, list[bytes]] = {}
        todo = list(sale_ids)
        deadline = time.monotonic() + self.sweep_budget_s
        rounds = 0
        while todo:
            if rounds and time.monotonic() >= deadline:
                self.metrics.sweep_budget_exhausted.inc()
                logger.warning("reservation sweep stopped at its %.2f s budget after %d rounds with %d sale(s) "
                               "still due (%s); the next tick goes on", self.sweep_budget_s, rounds, len(todo),
                               ", ".join(todo[:5]))
                break
            rounds += 1
            todo = await self._sweep_round(todo, now_ms, stocks, outbox)
        return list(stocks.values()), outbox

    async def _sweep_round(self, sale_ids: list[str], now_ms: int, stocks: dict[str, SaleStock],
                           outbox: dict[str, list[bytes]]) -> list[str]:
        """One round trip of the sweep and drain scripts; returns the sales with work left."""

        def build(pipe: Any) -> None:
            for sale_id in sale_ids:
                keys = [rk.sale(sale_id), rk.sale_orders(sale_id), rk.sale_users(sale_id),
                        rk.sale_deadlines(sale_id), rk.sale_outbox(sale_id)]
                self.sweep_script.queue(pipe, keys, [now_ms, SWEEP_BATCH])
                self.drain.queue(pipe, [rk.sale_outbox(sale_id)], [now_ms, OUTBOX_LEASE_MS, SWEEP_DRAIN_BATCH])

        raw = await self._run("stock_sweep", build)
        more: list[str] = []
        for i, sale_id in enumerate(sale_ids):
            res, drained = raw[2 * i], raw[2 * i + 1]
            if not isinstance(drained, Exception) and drained:
                outbox.setdefault(sale_id, []).extend(drained)  # leased: sent whatever happens below
            if isinstance(res, Exception):
                self.metrics.redis_errors.labels("stock_sweep").inc()
                stocks.pop(sale_id, None)  # no fresh reading: neither gauged nor retired this tick
                continue
            released, allotted, available, reserved, sold, status, pending, due, refunded = res
            before = stocks[sale_id].released if sale_id in stocks else 0
            stocks[sale_id] = SaleStock(sale_id, before + int(released), int(allotted), int(available),
                                        int(reserved), int(sold), _s(status), int(pending), int(refunded))
            if int(due) > 0 or (not isinstance(drained, Exception) and len(drained) >= SWEEP_DRAIN_BATCH):
                more.append(sale_id)
        return more

    async def retire(self, sale_ids: list[str], now_ms: int) -> list[str]:
        """Drop from the active set the closed sales with no deadline and an empty outbox (a leased
        item stays in the outbox until its send is acknowledged, so it keeps its sale swept until it
        is delivered); returns the sales retired. Call it after this tick's outbox sends were acked:
        the check is made here, in Redis, never from an earlier reading.

        Three steps, because the active set lives in another cluster slot than the sale: retire.lua
        checks and marks each sale (atomically, in the sale's slot), the marked ones are SREMed, and
        retire.lua clears the marks. A sale.opened for a marked sale waits (stock.lua answers
        TRYAGAIN) until its mark is cleared or its lease (RETIRE_LEASE_MS) ran out; a sale whose mark
        was taken away by a re-open after the lease is put back in the active set."""
        if not sale_ids:
            return []
        token = secrets.token_hex(8)

        def phase(name: str, sales: list[str]) -> Any:
            def build(pipe: Any) -> None:
                for sale_id in sales:
                    self.retire_script.queue(pipe, [rk.sale(sale_id), rk.sale_deadlines(sale_id),
                                                    rk.sale_outbox(sale_id)],
                                             [name, now_ms, RETIRE_LEASE_MS, token])
            return build

        begun = await self._run("stock_retire", phase("begin", sale_ids))
        marked = [s for s, r in zip(sale_ids, begun, strict=True) if not isinstance(r, Exception) and int(r) == 1]
        if not marked:
            return []
        await self._run("stock_retire", lambda pipe: pipe.srem(rk.active_sales(), *marked))
        ended = await self._run("stock_retire", phase("end", marked))
        back = [s for s, r in zip(marked, ended, strict=True) if isinstance(r, Exception) or int(r) != 1]
        if back:  # re-opened after a stalled retirement's lease ran out: it must stay swept
            logger.warning("sale(s) %s re-opened while being retired; kept active", ", ".join(back[:5]))
            await self._run("stock_retire", lambda pipe: pipe.sadd(rk.active_sales(), *back))
        return [s for s in marked if s not in back]

def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
