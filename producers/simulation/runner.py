"""Publish a plan on a (scaled) clock in batched chunks, and follow up on the pipeline's decisions.

Feedback mode: the plan holds no payments; each accepted order's buyer pays, cancels or abandons as
its intent says, once the decision is seen (DecisionWaiter, plus Redis for stragglers). When no
decision at all arrives within a grace period (no worker running), the runner falls back to the
optimistic mode: it pays for the orders the reference stock model accepts, and the pipeline has to
tolerate payments for orders it rejected.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from producers.decisions import Decision, decision_from_record
from schemas import keys
from schemas.events import Event, OrderPlaced
from schemas.topics import logical_topic

from .oracle import reference_outcomes
from .plan_types import Intent, Plan

logger = logging.getLogger(__name__)


class EventSink(Protocol):
    async def publish_many(self, events: Iterable[Event]) -> Sequence[Any]: ...


class DecisionSource(Protocol):
    def recent(self, sale_id: str, order_id: str) -> Decision | None: ...


@dataclass
class RunStats:
    """What one run sent and saw; ``mode`` is plan | feedback | optimistic."""

    mode: str
    sent: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    publish_calls: int = 0
    orders_sent: int = 0  # distinct order.placed
    decided: int = 0
    accepted: int = 0
    rejected: int = 0
    follow_ups_scheduled: int = 0
    undecided: int = 0  # orders still without a decision when the run ended
    fell_back: bool = False


@dataclass(frozen=True)
class Progress:
    elapsed_s: float  # wall clock
    sim_s: float  # simulated clock, from the plan's origin
    phase: str
    sent: int
    rate: float  # events/s since the previous report
    stats: RunStats


@dataclass(frozen=True)
class _Pending:
    sale_id: str
    sent_at: float  # loop time


class Runner:
    """Sends one plan. ``speed`` scales the simulated clock (2.0 = twice real time); None = as fast as possible."""

    def __init__(self, plan: Plan, sink: EventSink, *, speed: float | None = 1.0,
                 decisions: DecisionSource | None = None, redis: Any | None = None, chunk_events: int = 5000,
                 feedback_grace_s: float = 10.0, decision_timeout_s: float = 30.0, max_drain_s: float = 120.0,
                 progress: Callable[[Progress], None] | None = None, progress_interval_s: float = 1.0,
                 tick_s: float = 0.05, min_tick_s: float = 0.02) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.plan = plan
        self.sink = sink
        self.speed = speed
        self.decisions = decisions
        self.redis = redis
        self.chunk = max(1, chunk_events)
        self.grace_s = feedback_grace_s
        self.decision_timeout_s = decision_timeout_s
        self.max_drain_s = max_drain_s
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self.tick_s = tick_s
        self.min_tick_s = min(min_tick_s, tick_s)  # events due within it share one publish call
        feedback = not plan.includes_payments and decisions is not None
        self.stats = RunStats(mode="plan" if plan.includes_payments else "feedback" if feedback else "optimistic")
        self._follow: list[tuple[int, int, Event]] = []
        self._follow_seq = 0
        self._pending: dict[str, _Pending] = {}
        self._first_order_at: float | None = None
        self._last_redis_poll = 0.0

    # --- clock ----------------------------------------------------------------------------
    def _sim_now(self, loop_now: float, start: float) -> float:
        if self.speed is None:
            return float("inf")
        return self.plan.t0_ms + (loop_now - start) * 1000.0 * self.speed

    # --- follow-ups -----------------------------------------------------------------------
    def _schedule(self, intent: Intent, now_ms: float) -> None:
        planned = intent.placed_ts + intent.delay_ms
        ts = planned if now_ms == float("inf") else max(planned, int(now_ms))
        event = intent.follow_up(ts)
        if event is None:
            return
        self._follow_seq += 1
        heapq.heappush(self._follow, (ts, self._follow_seq, event))
        self.stats.follow_ups_scheduled += 1

    def _go_optimistic(self, now_ms: float) -> None:
        placed = (s.event for s in self.plan.events if s.event.type == OrderPlaced.TYPE and not s.duplicate)
        outcomes = reference_outcomes(self.plan.sales, placed, self.plan.intents)
        for oid in sorted(outcomes):
            intent = self.plan.intents.get(oid)
            if outcomes[oid].accepted and intent is not None:
                self._schedule(intent, now_ms)
        self._pending.clear()

    def _on_decision(self, decision: Decision, now_ms: float) -> None:
        self._pending.pop(decision.order_id, None)
        self.stats.decided += 1
        if not decision.accepted:
            self.stats.rejected += 1
            return
        self.stats.accepted += 1
        intent = self.plan.intents.get(decision.order_id)
        if intent is not None:
            self._schedule(intent, now_ms)

    def _collect(self, now_ms: float) -> None:
        if self.stats.mode != "feedback" or not self._pending or self.decisions is None:
            return
        source = self.decisions
        for oid, pending in list(self._pending.items()):
            found = source.recent(pending.sale_id, oid)
            if found is not None:
                self._on_decision(found, now_ms)

    async def _poll_redis(self, loop_now: float, now_ms: float) -> None:
        """Ask Redis about orders whose decision event has not shown up after a while (bounded per call)."""
        if self.redis is None or self.stats.mode != "feedback" or loop_now - self._last_redis_poll < 1.0:
            return
        self._last_redis_poll = loop_now
        stale: dict[str, list[str]] = {}
        for oid, p in self._pending.items():
            if loop_now - p.sent_at >= 2.0:
                stale.setdefault(p.sale_id, []).append(oid)
        for sale_id, oids in stale.items():
            oids = oids[:2000]
            try:
                raws = await self.redis.hmget(keys.sale_orders(sale_id), oids)
            except (RedisError, OSError) as exc:
                logger.warning("cannot read decisions from Redis, relying on the decisions topic: %s", exc)
                self.redis = None
                return
            for oid, raw in zip(oids, raws, strict=True):
                if raw is not None and oid in self._pending:
                    found = decision_from_record(sale_id, oid, raw)
                    if found is not None:
                        self._on_decision(found, now_ms)

    def _check_feedback(self, loop_now: float, now_ms: float) -> None:
        if self.stats.mode != "feedback" or self._first_order_at is None:
            return
        if self.stats.decided == 0 and loop_now - self._first_order_at > self.grace_s:
            logger.warning("no order decision within %.0fs of the first order (is a worker running?); "
                           "paying optimistically from the reference stock model", self.grace_s)
            self.stats.mode = "optimistic"
            self.stats.fell_back = True
            self._go_optimistic(now_ms)
            return
        for oid, p in list(self._pending.items()):  # give up on orders nobody decides
            if loop_now - p.sent_at > self.decision_timeout_s:
                del self._pending[oid]
                self.stats.undecided += 1

    # --- sending --------------------------------------------------------------------------
    async def _send(self, batch: list[Event], duplicates: list[bool], loop_now: float) -> None:
        await self.sink.publish_many(batch)
        st = self.stats
        st.publish_calls += 1
        st.sent += len(batch)
        for ev, dup in zip(batch, duplicates, strict=True):
            st.by_type[ev.type] += 1
            st.by_topic[logical_topic(ev.type)] += 1
            if not dup and isinstance(ev.data, OrderPlaced):
                st.orders_sent += 1
                if st.mode == "feedback" and ev.data.order_id in self.plan.intents:
                    self._pending[ev.data.order_id] = _Pending(ev.data.sale_id, loop_now)
                    if self._first_order_at is None:
                        self._first_order_at = loop_now

    async def run(self) -> RunStats:
        loop = asyncio.get_running_loop()
        start = loop.time()
        events, n, idx = self.plan.events, len(self.plan.events), 0
        if self.stats.mode == "optimistic" and not self.plan.includes_payments:
            self._go_optimistic(self._sim_now(start, start))
        next_report, last_sent, last_report_at = start + self.progress_interval_s, 0, start
        drain_started: float | None = None
        while True:
            loop_now = loop.time()
            now_ms = self._sim_now(loop_now, start)
            self._collect(now_ms)
            await self._poll_redis(loop_now, now_ms)
            self._check_feedback(loop_now, now_ms)
            batch: list[Event] = []
            dups: list[bool] = []
            while idx < n and events[idx].at_ms <= now_ms and len(batch) < self.chunk:
                batch.append(events[idx].event)
                dups.append(events[idx].duplicate)
                idx += 1
            while self._follow and self._follow[0][0] <= now_ms and len(batch) < self.chunk:
                batch.append(heapq.heappop(self._follow)[2])
                dups.append(False)
            if batch:
                await self._send(batch, dups, loop_now)
            loop_now = loop.time()
            if self.progress is not None and loop_now >= next_report:
                sim_ms = min(self._sim_now(loop_now, start), float(events[idx - 1].at_ms) if idx else self.plan.t0_ms)
                rate = (self.stats.sent - last_sent) / max(loop_now - last_report_at, 1e-6)
                self.progress(Progress(loop_now - start, (sim_ms - self.plan.t0_ms) / 1000.0,
                                       self._phase(idx, sim_ms), self.stats.sent, rate, self.stats))
                next_report, last_sent, last_report_at = loop_now + self.progress_interval_s, self.stats.sent, loop_now
            if len(batch) >= self.chunk:
                continue
            if idx >= n:
                drain_started = loop_now if drain_started is None else drain_started
                if not self._follow and not self._pending:
                    break
                if loop_now - drain_started > self.max_drain_s:
                    logger.warning("stopping with %d follow-ups unsent and %d orders undecided",
                                   len(self._follow), len(self._pending))
                    self.stats.undecided += len(self._pending)
                    break
            await asyncio.sleep(self._sleep_for(idx, loop_now, start))
        if self.progress is not None:
            now = loop.time()
            self.progress(Progress(now - start, (self.plan.end_ms - self.plan.t0_ms) / 1000.0, "done",
                                   self.stats.sent, 0.0, self.stats))
        return self.stats

    def _sleep_for(self, idx: int, loop_now: float, start: float) -> float:
        if self.speed is None:
            return 0.0 if idx < len(self.plan.events) else self.tick_s
        due = []
        if idx < len(self.plan.events):
            due.append(self.plan.events[idx].at_ms)
        if self._follow:
            due.append(self._follow[0][0])
        if not due:
            return self.tick_s
        wait = (min(due) - self._sim_now(loop_now, start)) / 1000.0 / self.speed
        return min(max(wait, self.min_tick_s), self.tick_s)

    def _phase(self, idx: int, sim_ms: float) -> str:
        if idx >= len(self.plan.events):
            return "payments" if self._follow else "waiting for decisions" if self._pending else "done"
        return self.plan.phase_at(sim_ms)
