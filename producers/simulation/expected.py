"""An independent recount of what a plan sends: per type, per topic, per sale; used by tests and --dry-run."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.events import OrderCancelled, OrderPaid, OrderPlaced
from schemas.topics import logical_topic

from .oracle import reference_outcomes
from .plan_types import Plan


@dataclass
class SaleExpectation:
    sale_id: str
    sku: str
    room_id: str
    allotment: int
    per_user_limit: int
    sends: int = 0  # order.placed records sent, re-sends included
    attempts: int = 0  # distinct order.placed events (distinct event ids)
    duplicates: int = 0  # exact re-sends
    distinct_orders: int = 0
    distinct_users: int = 0
    units_requested: int = 0
    early_attempts: int = 0  # ts before starts_at
    over_limit_attempts: int = 0  # qty above the per-user limit in one order
    users_over_limit: int = 0  # users whose attempts ask for more units in total than the limit
    payments_sent: int = 0
    cancels_sent: int = 0
    ref_accepted: int = 0
    ref_rejected: dict[str, int] = field(default_factory=dict)
    ref_final: dict[str, int] = field(default_factory=dict)  # sold | expired | cancelled


@dataclass
class Expected:
    sends: int
    unique_events: int
    duplicates: int
    by_type: dict[str, int]
    by_topic: dict[str, int]  # logical topic → records' events sent (re-sends included)
    rooms: list[str]
    users: int
    sales: dict[str, SaleExpectation]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected(plan: Plan) -> Expected:
    """Recount the plan's sends from its events alone (plus the reference model's decisions)."""
    by_type: Counter[str] = Counter()
    by_topic: Counter[str] = Counter()
    ids: set[str] = set()
    users: set[str] = set()
    sales = {s.sale_id: SaleExpectation(s.sale_id, s.sku, s.room_id, s.allotment, s.per_user_limit)
             for s in plan.sales}
    specs = {s.sale_id: s for s in plan.sales}
    sale_users: dict[str, Counter[str]] = {sid: Counter() for sid in sales}
    sale_orders: dict[str, set[str]] = {sid: set() for sid in sales}
    placed = []
    for item in plan.events:
        ev = item.event
        by_type[ev.type] += 1
        by_topic[logical_topic(ev.type)] += 1
        dup = ev.event_id in ids
        ids.add(ev.event_id)
        if not ev.user_id.startswith("host-"):
            users.add(ev.user_id)
        d = ev.data
        if isinstance(d, OrderPlaced) and d.sale_id in sales:
            s = sales[d.sale_id]
            s.sends += 1
            if dup:
                s.duplicates += 1
                continue
            placed.append(ev)
            s.attempts += 1
            s.units_requested += d.qty
            sale_orders[d.sale_id].add(d.order_id)
            sale_users[d.sale_id][ev.user_id] += d.qty
            if ev.ts < specs[d.sale_id].starts_at:
                s.early_attempts += 1
            if d.qty > s.per_user_limit:
                s.over_limit_attempts += 1
        elif isinstance(d, OrderPaid) and d.sale_id in sales:
            sales[d.sale_id].payments_sent += 1
        elif isinstance(d, OrderCancelled) and d.sale_id in sales:
            sales[d.sale_id].cancels_sent += 1
    for sid, s in sales.items():
        s.distinct_orders = len(sale_orders[sid])
        s.distinct_users = len(sale_users[sid])
        s.users_over_limit = sum(1 for units in sale_users[sid].values() if units > s.per_user_limit)
    for outcome in reference_outcomes(plan.sales, placed, plan.intents).values():
        s = sales[outcome.sale_id]
        if outcome.accepted:
            s.ref_accepted += 1
            s.ref_final[outcome.final] = s.ref_final.get(outcome.final, 0) + 1
        else:
            reason = outcome.reason or "invalid"
            s.ref_rejected[reason] = s.ref_rejected.get(reason, 0) + 1
    return Expected(sends=len(plan.events), unique_events=len(ids), duplicates=len(plan.events) - len(ids),
                    by_type=dict(by_type), by_topic=dict(by_topic), rooms=list(plan.rooms), users=len(users),
                    sales=sales)
