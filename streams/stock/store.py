"""The stock core's Redis store: Lua and key names behind a few batch methods."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from kernel.redis import AnyRedis, LuaScript, run_pipeline
from schemas import keys as rk
from streams.metrics import WorkerMetrics

OUTBOX_LEASE_MS = 10_000
UNKNOWN_SALE_TTL_MS = 86_400_000  # state of a sale id that was never opened lives a day
OUTBOX_BATCH = 1000
SWEEP_BATCH = 2000


def _sale_keys(sale_id: str) -> list[str]:
    return [rk.sale(sale_id), rk.sale_orders(sale_id), rk.sale_users(sale_id), rk.sale_deadlines(sale_id),
            rk.sale_dups(sale_id), rk.sale_applied(sale_id), rk.sale_outbox(sale_id)]


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

    @property
    def consistent(self) -> bool:
        return self.allotted == self.available + self.reserved + self.sold and self.available >= 0


@dataclass(slots=True)
class SaleBatchResult:
    results: list[dict[str, Any]] | None  # one per op, or None if the script failed
    error: Exception | None
    outbox: list[bytes]


class StockStore:
    def __init__(self, client: AnyRedis, metrics: WorkerMetrics) -> None:
        self.client = client
        self.metrics = metrics
        self.stock = LuaScript("streams.stock", "stock")
        self.sweep_script = LuaScript("streams.stock", "sweep")
        self.drain = LuaScript("streams.stock", "drain")
        self.scripts = [self.stock, self.sweep_script, self.drain]

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
        """Release due reservations of each sale and lease its outbox; one round trip."""

        def build(pipe: Any) -> None:
            for sale_id in sale_ids:
                keys = [rk.sale(sale_id), rk.sale_orders(sale_id), rk.sale_users(sale_id),
                        rk.sale_deadlines(sale_id), rk.sale_outbox(sale_id)]
                self.sweep_script.queue(pipe, keys, [now_ms, SWEEP_BATCH])
                self.drain.queue(pipe, [rk.sale_outbox(sale_id)], [now_ms, OUTBOX_LEASE_MS, OUTBOX_BATCH])

        if not sale_ids:
            return [], {}
        raw = await self._run("stock_sweep", build)
        stocks: list[SaleStock] = []
        outbox: dict[str, list[bytes]] = {}
        for i, sale_id in enumerate(sale_ids):
            res, drained = raw[2 * i], raw[2 * i + 1]
            if isinstance(res, Exception):
                self.metrics.redis_errors.labels("stock_sweep").inc()
                continue
            released, allotted, available, reserved, sold, status, pending = res
            stocks.append(SaleStock(sale_id, int(released), int(allotted), int(available), int(reserved),
                                    int(sold), _s(status), int(pending)))
            if not isinstance(drained, Exception) and drained:
                outbox[sale_id] = list(drained)
        return stocks, outbox

    async def retire(self, sale_ids: list[str]) -> None:
        """Drop closed sales with nothing left to release from the active set."""
        if sale_ids:
            await self.client.srem(rk.active_sales(), *sale_ids)  # type: ignore[misc]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
