"""The counters' Redis store: one pipelined round trip of Lua calls per batch, NOSCRIPT-safe."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kernel.redis import AnyRedis, LuaScript, run_pipeline
from schemas import keys
from schemas.events import CHANNELS
from streams.counters.params import CounterParams
from streams.counters.rollups import Ops
from streams.metrics import WorkerMetrics


class CounterScriptError(RuntimeError):
    """A counters script failed for one room or sale (the batch handler narrows and retries)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    dups: int
    late: int
    too_old: int
    replayed: int
    newest_ms: int
    spike_state: bytes
    lo: int  # first second of ``counts``
    counts: list[int]
    paid: dict[str, int] = field(default_factory=dict)  # sale calls: paid event id → confirmed amount or -1
    refunded: dict[str, int] = field(default_factory=dict)  # sale calls: refund event id → amount or -1


@dataclass(frozen=True, slots=True)
class SpikeStore:
    """A detector state to store for one subject, with the alerts it opened (id, ms, JSON)."""

    base: str
    field_name: str
    expected_t: int | None
    state_json: str
    alerts: tuple[tuple[str, int, str], ...] = ()


def _result(raw: Sequence[Any], paid_ids: Sequence[str] = (), refund_ids: Sequence[str] = ()) -> ApplyResult:
    counts = [int(c) for c in raw[8].split()]
    paid: dict[str, int] = {}
    refunded: dict[str, int] = {}
    if len(raw) > 9:
        for eid, amount in zip(paid_ids, raw[9], strict=False):
            paid[eid] = int(amount)
    if len(raw) > 10:
        for eid, amount in zip(refund_ids, raw[10], strict=False):
            refunded[eid] = int(amount)
    return ApplyResult(int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), int(raw[4]), int(raw[5]),
                       raw[6] or b"", int(raw[7]), counts, paid, refunded)


def counters_script(name: str) -> LuaScript:
    """A counters script with the shared counters_lib.lua prepended."""
    return LuaScript("streams.counters", name, include=("counters_lib",))


class CountersStore:
    """Applies room and sale operation lists and stores spike states; hides keys and Lua."""

    def __init__(self, client: AnyRedis, params: CounterParams, metrics: WorkerMetrics,
                 lookback_s: int = 262) -> None:
        self.client = client
        self.params = params
        self.metrics = metrics
        self.lookback_s = lookback_s
        self.room = counters_script("counters_room")
        self.sale = counters_script("counters_sale")
        self.spike = LuaScript("streams.counters", "counters_spike")
        self.scripts = [self.room, self.sale, self.spike]

    async def _run(self, op: str, build: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            results = await run_pipeline(self.client, self.scripts, build)
        except Exception:
            self.metrics.redis_errors.labels(op).inc()
            raise
        self.metrics.redis_latency.labels(op).observe(time.perf_counter() - started)
        for r in results:
            if isinstance(r, Exception):
                self.metrics.redis_errors.labels(op).inc()
                raise CounterScriptError(f"{op}: {r}") from r
        return results

    def _room_header(self, stream: str, spike_field: str, spike_window_s: int) -> list[Any]:
        p = self.params
        return [stream, p.lateness_ms, p.dedupe_ms, p.stale_viewer_ms, p.series_keep_s, p.window_ttl_s,
                p.dedupe_ttl_s, p.room_ttl_s, p.leaderboard_keep, spike_field, spike_window_s, self.lookback_s,
                p.window_minutes, " ".join(CHANNELS)]

    async def apply_rooms(self, stream: str, groups: Mapping[str, Ops], spike_field: str = "",
                          spike_window_s: int = 10) -> dict[str, ApplyResult]:
        """Apply each room's operations (one script call per room, all in one round trip) and move
        the rooms up the room index."""
        if not groups:
            return {}
        rooms = list(groups)
        header = self._room_header(stream, spike_field, spike_window_s)
        index = keys.rooms_index()

        def build(pipe: Any) -> None:
            for room_id in rooms:
                ops = groups[room_id]
                self.room.queue(pipe, [keys.room_base(room_id), keys.room_sales(room_id)],
                                header + [orjson.dumps(ops.rows)])
            newest = max(groups[room_id].max_ts for room_id in rooms)
            pipe.zadd(index, {room_id: groups[room_id].max_ts for room_id in rooms}, gt=True)
            # rooms idle for longer than their keys live leave the index too (event time)
            pipe.zremrangebyscore(index, "-inf", f"({newest - self.params.room_ttl_s * 1000}")

        results = await self._run("counters_room", build)
        return {room_id: _result(raw) for room_id, raw in zip(rooms, results[:len(rooms)], strict=True)}

    async def apply_sales(self, stream: str, groups: Mapping[str, Ops], spike_field: str = "",
                          spike_window_s: int = 10) -> dict[str, ApplyResult]:
        if not groups:
            return {}
        p = self.params
        sales = list(groups)
        header = [stream, p.lateness_ms, p.dedupe_ms, p.sale_series_keep_s, p.dedupe_ttl_s, p.room_ttl_s,
                  spike_field, spike_window_s, self.lookback_s]

        def build(pipe: Any) -> None:
            for sale_id in sales:
                self.sale.queue(pipe, [keys.sale_base(sale_id), keys.sale_orders(sale_id)],
                                header + [orjson.dumps(groups[sale_id].rows)])

        results = await self._run("counters_sale", build)
        return {sale_id: _result(raw, groups[sale_id].paid_ids, groups[sale_id].refund_ids)
                for sale_id, raw in zip(sales, results, strict=False)}

    async def store_spikes(self, stores: Sequence[SpikeStore]) -> int:
        """Store detector states (compare-and-set on the last evaluated second); returns how many stuck."""
        if not stores:
            return 0
        p = self.params

        def build(pipe: Any) -> None:
            for s in stores:
                args: list[Any] = [s.field_name, "" if s.expected_t is None else s.expected_t, s.state_json,
                                   p.spikes_keep, p.room_ttl_s]
                for alert_id, ts, body in s.alerts:
                    args.extend((alert_id, ts, body))
                self.spike.queue(pipe, [s.base], args)

        results = await self._run("counters_spike", build)
        return sum(int(r) for r in results)
