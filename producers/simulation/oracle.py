"""Reference stock model: what a correct pipeline decides for a plan's orders, given buyers' intents.

It mirrors the stock rules (sale window, per-user limit counting reserved + sold units, first come
first served, reservations released on TTL or cancellation) on the simulated clock. The simulator
uses it to pay optimistically when no decisions can be read; tests use it to reason about a plan.
Near-simultaneous events (an expiry and an attempt in the same millisecond, a sweep interval) can be
decided differently by the real pipeline, so treat it as a reference, not as a prediction.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from schemas.events import Event, OrderPlaced

from .plan_types import Intent, SaleSpec


@dataclass(frozen=True, slots=True)
class RefOutcome:
    order_id: str
    sale_id: str
    accepted: bool
    reason: str | None  # reject reason, None when accepted
    final: str  # sold | expired | cancelled | rejected


def reference_outcomes(sales: Sequence[SaleSpec], orders: Iterable[Event],
                       intents: Mapping[str, Intent]) -> dict[str, RefOutcome]:
    """Decide every distinct order.placed (duplicates by event_id are ignored) per the stock rules."""
    by_sale: dict[str, list[Event]] = {s.sale_id: [] for s in sales}
    seen: set[str] = set()
    for ev in orders:
        if ev.event_id in seen or not isinstance(ev.data, OrderPlaced):
            continue
        seen.add(ev.event_id)
        by_sale.setdefault(ev.data.sale_id, []).append(ev)
    specs = {s.sale_id: s for s in sales}
    out: dict[str, RefOutcome] = {}
    for sale_id, evs in by_sale.items():
        spec = specs.get(sale_id)
        evs.sort(key=lambda e: e.ts)  # stable: ties keep plan order
        if spec is None:
            for ev in evs:
                assert isinstance(ev.data, OrderPlaced)
                out[ev.data.order_id] = RefOutcome(ev.data.order_id, sale_id, False, "sale_not_active", "rejected")
            continue
        out.update(_decide_sale(spec, evs, intents))
    return out


def _decide_sale(spec: SaleSpec, evs: list[Event], intents: Mapping[str, Intent]) -> dict[str, RefOutcome]:
    available = spec.allotment
    ttl_ms = spec.ttl_s * 1000
    held: dict[str, int] = {}
    releases: list[tuple[int, str, str, int]] = []  # (at_ms, order_id, final, qty)
    finals: dict[str, str] = {}
    owner: dict[str, str] = {}
    out: dict[str, RefOutcome] = {}
    for ev in evs:
        d = ev.data
        assert isinstance(d, OrderPlaced)
        while releases and releases[0][0] <= ev.ts:
            _, oid, _final, qty = heapq.heappop(releases)
            available += qty
            held[owner[oid]] -= qty
        if d.order_id in out:  # same order id, new event id: the pipeline rejects it as a duplicate
            continue
        reason = None
        if ev.ts < spec.starts_at or ev.ts >= spec.ends_at:
            reason = "sale_not_active"
        elif d.sku != spec.sku or d.unit_price != spec.price:
            reason = "invalid"
        elif held.get(ev.user_id, 0) + d.qty > spec.per_user_limit:
            reason = "limit_exceeded"
        elif available < d.qty:
            reason = "sold_out"
        if reason is not None:
            out[d.order_id] = RefOutcome(d.order_id, spec.sale_id, False, reason, "rejected")
            continue
        available -= d.qty
        held[ev.user_id] = held.get(ev.user_id, 0) + d.qty
        owner[d.order_id] = ev.user_id
        intent = intents.get(d.order_id)
        action = intent.action if intent is not None else "abandon"
        delay = intent.delay_ms if intent is not None else ttl_ms + 1
        if action == "pay" and delay <= ttl_ms:
            finals[d.order_id] = "sold"
        elif action == "cancel" and delay < ttl_ms:
            finals[d.order_id] = "cancelled"
            heapq.heappush(releases, (ev.ts + delay, d.order_id, "cancelled", d.qty))
        else:  # abandoned, or paid too late: the reservation expires first
            finals[d.order_id] = "expired"
            heapq.heappush(releases, (ev.ts + ttl_ms, d.order_id, "expired", d.qty))
        out[d.order_id] = RefOutcome(d.order_id, spec.sale_id, True, None, finals[d.order_id])
    return out
