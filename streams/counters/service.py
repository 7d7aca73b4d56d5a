"""The counters' batch handler: decode, one or two pipelined Redis round trips, spikes, emit."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import msgspec
import orjson

from kernel.clock import clamped_time_ms, now_ms
from schemas import keys
from schemas.codec import DEFAULT_MAX_RECORD_BYTES, decode_record
from schemas.events import Event, SpikeDetected, make_event
from schemas.topics import ALERTS, DECISIONS, ENGAGEMENT, ORDERS, logical_topic
from streams.counters.params import CounterParams
from streams.counters.rollups import (
    ORDER_TYPES,
    Item,
    Ops,
    decision_sale_ops,
    engagement_ops,
    order_room_ops,
    order_sale_ops,
)
from streams.counters.spike import SpikeConfig, SpikeState, evaluate
from streams.counters.store import ApplyResult, CountersStore, SpikeStore
from streams.emit import Outbound, Record, SendFn, bad, flush
from streams.metrics import WorkerMetrics
from streams.resilience import check_fault

logger = logging.getLogger(__name__)

SYSTEM_USER = "system"
LATENCY_SAMPLES = 256
# (state field, metric name) per spike subject kind
SPIKE_FORGET_WINDOWS = 6  # the active-spike gauge drops a silent subject after 6 detection windows
ROOM_EVENTS = ("sp:events", "events")
ROOM_ORDERS = ("sp:orders", "orders")
SALE_ATTEMPTS = ("sp:attempts", "attempts")



@dataclass
class Prepared:
    """A decoded, grouped batch waiting for its Redis round trips."""

    out: Outbound
    items: list[Item]
    rooms: dict[str, Ops] = field(default_factory=dict)
    sales: dict[str, Ops] = field(default_factory=dict)


def spike_configs(p: CounterParams) -> tuple[SpikeConfig, SpikeConfig]:
    """(rooms, sales): a room needs history before it can alert; a sale's opening rush is a spike."""
    room = SpikeConfig(factor=p.spike_factor, min_rate=p.spike_min_rate, window_s=p.spike_window_s,
                       baseline_s=p.spike_baseline_s, cooldown_s=p.spike_cooldown_s, warmup=p.spike_warmup,
                       settle_s=p.spike_settle_s, catchup_s=p.spike_catchup_s)
    return room, replace(room, warmup=0)


class CountersService:
    """Handles batches of one logical topic (engagement, orders or order-decisions)."""

    def __init__(self, store: CountersStore, params: CounterParams, metrics: WorkerMetrics, send: SendFn,
                 topic: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, clock: Callable[[], int] = now_ms,
                 owns_orders_input: bool = False, fault_marker: str | None = None) -> None:
        if topic not in (ENGAGEMENT, ORDERS, DECISIONS):
            raise ValueError(f"counters do not consume {topic!r}")
        self.store = store
        self.params = params
        self.metrics = metrics
        self.send = send
        self.topic = topic
        self.agent = "counters_" + {ENGAGEMENT: "engagement", ORDERS: "orders", DECISIONS: "decisions"}[topic]
        self.stream = keys.STREAM_CODES[topic]
        self.max_record_bytes = max_record_bytes
        self.clock = clock
        self.room_spikes, self.sale_spikes = spike_configs(params)
        # (scope, metric) → subject → monotonic time it was last seen in an open spike episode
        self._spiking: dict[tuple[str, str], dict[str, float]] = {}
        # The stock core consumes the orders topic too and owns its bad input (dead letters, metrics)
        # unless this worker runs without it.
        self.owns_input = topic != ORDERS or owns_orders_input
        self.fault_marker = fault_marker

    def _clamped(self, events: list[Event], rec: Record) -> list[Event]:
        """Events whose own time strays from the record's timestamp beyond MAX_CLIENT_SKEW_MS are counted at
        the bound: one event stamped a year ahead must not close every window of its room."""
        out = events
        for i, e in enumerate(events):
            ts = clamped_time_ms(e.ts, rec.timestamp_ms)
            if ts != e.ts:
                if out is events:
                    out = list(events)
                out[i] = msgspec.structs.replace(e, ts=ts)
                self.metrics.client_time_clamped.labels(self.topic).inc()
        return out

    async def handle(self, records: Sequence[Record]) -> None:
        """Apply one batch: :meth:`prepare` (CPU only) then :meth:`apply` (Redis, outputs)."""
        await self.apply(self.prepare(records))

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """Decode and group a batch; no I/O, so it can run while the previous batch is in Redis."""
        out = Outbound()
        items: list[Item] = []
        unsigned = 0
        for rec in records:
            if not rec.signature_ok:  # not a worker's record (forged or altered): never counted
                unsigned += 1
                continue
            decoded = decode_record(rec.value, self.max_record_bytes)
            if self.owns_input:
                for err in decoded.errors:
                    out.reject(err, rec, self.metrics)
            events = decoded.events
            if rec.timestamp_ms is not None and self.topic != DECISIONS:  # decisions: the workers' own times
                events = self._clamped(events, rec)
            items.extend(Item(rec.partition, rec.offset, rec.first_index + i, e, rec.timestamp_ms)
                         for i, e in enumerate(events))
            if self.fault_marker:
                for e in decoded.events:
                    check_fault(self.fault_marker, e.event_id)
        if unsigned:
            self.metrics.unsigned_outputs_dropped.labels(self.topic).inc(unsigned)
            logger.warning("%s: dropped %d records without a valid worker signature", self.agent, unsigned)
        if self.owns_input and items:
            seen = Counter(it.event.type for it in items)
            for type_, n in seen.items():
                self.metrics.events_consumed.labels(self.topic, type_).inc(n)
        prepared = Prepared(out, items)
        if self.topic == ENGAGEMENT:
            prepared.rooms, misplaced = engagement_ops(items)
            self._misplaced(misplaced, records, out)
        elif self.topic == ORDERS:
            if self.owns_input:  # without the stock core in this worker, misplaced input is ours to report
                self._misplaced([it for it in items if logical_topic(it.event.type) != ORDERS], records, out)
            prepared.items = [it for it in items if it.event.type in ORDER_TYPES]
            prepared.sales = order_sale_ops(prepared.items)
        else:
            prepared.sales, misplaced = decision_sale_ops(items)
            self._misplaced(misplaced, records, out)
        return prepared

    async def apply(self, prepared: Prepared) -> None:
        out = prepared.out
        stores: list[SpikeStore] = []
        if self.topic == ENGAGEMENT:
            results = await self.store.apply_rooms(self.stream, prepared.rooms, ROOM_EVENTS[0],
                                                     self.room_spikes.window_s)
            self._account(prepared.rooms, results)
            stores += self._spikes("room", prepared.rooms, results, ROOM_EVENTS, self.room_spikes, out)
        elif self.topic == ORDERS:
            sales = prepared.sales
            sale_results = await self.store.apply_sales(self.stream, sales, SALE_ATTEMPTS[0],
                                                          self.sale_spikes.window_s)
            paid = {(sale_id, eid): amount for sale_id, r in sale_results.items() for eid, amount in r.paid.items()}
            refunded = {(sale_id, eid): amount for sale_id, r in sale_results.items()
                        for eid, amount in r.refunded.items()}
            rooms = order_room_ops(prepared.items, paid, refunded)
            room_results = await self.store.apply_rooms(self.stream, rooms, ROOM_ORDERS[0],
                                                          self.room_spikes.window_s)
            self._account(rooms, room_results)
            stores += self._spikes("sale", sales, sale_results, SALE_ATTEMPTS, self.sale_spikes, out)
            stores += self._spikes("room", rooms, room_results, ROOM_ORDERS, self.room_spikes, out)
        else:
            results = await self.store.apply_sales(self.stream, prepared.sales)
            self._account(prepared.sales, results)
        # Alerts are delivered before the detector state is stored: a crash in between re-sends
        # the same alert id (consumers dedupe by event_id) instead of losing it.
        await flush(self.send, out, self.max_record_bytes)
        await self.store.store_spikes(stores)

    def _misplaced(self, misplaced: list[Item], records: Sequence[Record], out: Outbound) -> None:
        by_pos = {(r.partition, r.offset): r for r in records}
        for it in misplaced:
            rec = by_pos[(it.partition, it.offset)]
            out.reject(bad(0, "wrong_topic", f"{it.event.type} does not belong on the {self.topic} topic",
                           orjson.dumps(it.event.to_dict())), rec, self.metrics)

    def _account(self, groups: Mapping[str, Ops], results: Mapping[str, ApplyResult]) -> None:
        if not groups:
            return
        done = self.clock()
        latency = self.metrics.processing_latency.labels(self.agent)
        n = sum(ops.count for ops in groups.values())
        # Every event of a subject is written by the same script call, so a systematic sample of
        # each subject's events (at most LATENCY_SAMPLES per batch) gives the same distribution as
        # observing all of them, at a fraction of the cost at tens of thousands of events/s.
        stride = max(1, n // LATENCY_SAMPLES)
        late = 0
        for subject, ops in groups.items():
            for ts in ops.timestamps[::stride]:
                latency.observe(max(0.0, (done - ts) / 1000))
            r = results.get(subject)
            if r is not None:
                late += r.late + r.too_old
        self.metrics.batch_size.labels(self.agent).observe(n)
        if late:
            self.metrics.late_events.labels(self.agent).inc(late)

    def _spikes(self, scope: Literal["room", "sale"], groups: Mapping[str, Ops], results: Mapping[str, ApplyResult],
                kind: tuple[str, str], cfg: SpikeConfig, out: Outbound) -> list[SpikeStore]:
        field_name, metric = kind
        stores = []
        spiking = self._spiking.setdefault((scope, metric), {})
        for subject, r in results.items():
            if r.newest_ms <= 0:
                continue
            state = SpikeState.from_json(r.spike_state)
            outcome = evaluate(state, r.lo, r.counts, r.newest_ms // 1000, cfg)
            if not outcome.advanced:
                continue
            if outcome.state.active:
                spiking[subject] = time.monotonic()
            else:
                spiking.pop(subject, None)
            base = keys.room_base(subject) if scope == "room" else keys.sale_base(subject)
            alerts = []
            for a in outcome.alerts:
                alert_id = f"spike:{scope}:{subject}:{metric}:{a.second}"
                ts = (a.second + 1) * 1000
                room_id = groups[subject].room_id or subject
                event = make_event(
                    SpikeDetected(scope=scope, subject_id=subject, metric=metric, rate=a.rate, baseline=a.baseline,
                                  factor=cfg.factor, window_s=cfg.window_s),
                    event_id=alert_id, ts=ts, room_id=room_id, user_id=SYSTEM_USER)
                out.add(ALERTS, event)
                self.metrics.spikes.labels(scope).inc()
                body = orjson.dumps({"id": alert_id, "ts": ts, "scope": scope, "subject_id": subject,
                                     "room_id": room_id, "metric": metric, "rate": a.rate, "baseline": a.baseline,
                                     "threshold": a.threshold, "factor": cfg.factor,
                                     "window_s": cfg.window_s}).decode()
                alerts.append((alert_id, ts, body))
                logger.info("spike: %s %s %s at %.1f/s (baseline %.2f/s)", scope, subject, metric, a.rate,
                            a.baseline)
            stores.append(SpikeStore(base, field_name, state.t, outcome.state.to_json(), tuple(alerts)))
        # A subject whose events stopped mid-episode is not evaluated again: forget it after a while.
        horizon = time.monotonic() - SPIKE_FORGET_WINDOWS * cfg.window_s
        for subject in [s for s, seen in spiking.items() if seen < horizon]:
            del spiking[subject]
        self.metrics.spikes_active.labels(scope, metric).set(len(spiking))
        return stores
