"""The simulation plan: deterministic, valid, realistic in the ways the pipeline must cope with."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from producers import simulator
from producers.decisions import Decision
from producers.simulation.expected import expected
from producers.simulation.model import SimulationParams
from producers.simulation.oracle import reference_outcomes
from producers.simulation.plan import build_plan
from producers.simulation.plan_types import Intent, Plan, SaleSpec
from producers.simulation.runner import Runner
from schemas.events import CHANNELS, Event, OrderPaid, OrderPlaced, SaleOpened, new_event, parse_event
from schemas.topics import logical_topic, partition_key

SMALL = SimulationParams(viewers=400, duration_s=40.0, sales=1, allotment=50, first_sale_at_s=6.0,
                         sale_window_s=25.0, ttl_s=8)


@pytest.fixture(scope="module")
def default_plan() -> Plan:
    return build_plan(SimulationParams(), run_id="t")


def dicts(plan: Plan) -> list[tuple[int, dict[str, Any]]]:
    return [(s.at_ms, s.event.to_dict()) for s in plan.events]


def placed(plan: Plan) -> list[Event]:
    return [s.event for s in plan.events if s.event.type == "order.placed" and not s.duplicate]


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    a = build_plan(SMALL, run_id="r")
    assert dicts(a) == dicts(build_plan(SMALL, run_id="r"))
    other = build_plan(SimulationParams(**{**SMALL.__dict__, "seed": SMALL.seed + 1}), run_id="r")
    assert dicts(other) != dicts(a)


def test_run_id_and_clock_origin_only_rename_and_shift() -> None:
    a = build_plan(SMALL, run_id="a", t0_ms=1_000_000)
    b = build_plan(SMALL, run_id="b", t0_ms=2_000_000)
    shape = [(s.at_ms - a.t0_ms, s.event.type) for s in a.events]
    assert shape == [(s.at_ms - b.t0_ms, s.event.type) for s in b.events]
    assert not {s.event.event_id for s in a.events} & {s.event.event_id for s in b.events}
    assert all(s.event.event_id.split(":")[0 if s.event.type not in ("order.paid", "order.cancelled") else 1]
               .startswith("a") for s in a.events)


# --- validity ----------------------------------------------------------------------------


def test_every_event_validates_and_round_trips(default_plan: Plan) -> None:
    for s in default_plan.events:
        assert parse_event(s.event.to_dict()) == s.event


def test_event_ids_unique_except_deliberate_resends(default_plan: Plan) -> None:
    first: dict[str, Event] = {}
    resends = 0
    for s in default_plan.events:
        if s.duplicate:
            resends += 1
            assert first[s.event.event_id] == s.event, "a re-send is the exact same event, sent later"
            assert s.at_ms > s.event.ts
        else:
            assert s.event.event_id not in first, "fresh events have fresh ids"
            first[s.event.event_id] = s.event
    assert resends == expected(default_plan).duplicates > 0


def test_time_order_and_timestamps_non_decreasing_per_key(default_plan: Plan) -> None:
    at = [s.at_ms for s in default_plan.events]
    assert at == sorted(at)
    last: dict[tuple[str, bytes], int] = {}
    for s in default_plan.events:
        if s.duplicate:
            continue
        assert s.event.ts == s.at_ms
        key = (logical_topic(s.event.type), partition_key(s.event))
        assert s.event.ts >= last.get(key, 0)
        last[key] = s.event.ts


# --- the sale ----------------------------------------------------------------------------


def test_attempts_exceed_allotment_by_the_factor(default_plan: Plan) -> None:
    exp = expected(default_plan)
    p = default_plan.params
    assert len(exp.sales) == p.sales * p.rooms == 2
    for s in exp.sales.values():
        assert s.attempts == s.distinct_orders == round(p.allotment * p.attempts_factor) == 3000
        assert s.sends == s.attempts + s.duplicates
        assert s.distinct_users < s.attempts, "users retry with new order ids"
        assert s.ref_rejected.get("sold_out", 0) > s.allotment, "most attempts find the stock gone"


def test_attempts_factor_and_allotment_are_honoured() -> None:
    plan = build_plan(SimulationParams(**{**SMALL.__dict__, "allotment": 37, "attempts_factor": 3.5}))
    [s] = expected(plan).sales.values()
    assert s.attempts == round(37 * 3.5)


def test_burst_comes_in_the_first_seconds(default_plan: Plan) -> None:
    for sale in default_plan.sales:
        ts = [e.ts for e in placed(default_plan) if e.data.sale_id == sale.sale_id]  # type: ignore[attr-defined]
        first_5s = sum(1 for t in ts if sale.starts_at <= t < sale.starts_at + 5000)
        assert first_5s > len(ts) / 3
        assert first_5s > 2 * sale.allotment
        assert all(sale.starts_at - 2000 <= t < sale.ends_at for t in ts)


def test_limit_exceeders_and_early_taps_present(default_plan: Plan) -> None:
    for s in expected(default_plan).sales.values():
        assert s.over_limit_attempts > 0, "some ask for more than the per-user limit in one order"
        assert s.users_over_limit > 0, "some try for more units over several attempts"
        assert s.early_attempts > 0
        assert s.ref_rejected.get("limit_exceeded", 0) > 0
        assert s.ref_rejected.get("sale_not_active", 0) == s.early_attempts


def test_orders_match_their_sale_and_follow_the_announcement(default_plan: Plan) -> None:
    specs = {s.sale_id: s for s in default_plan.sales}
    opened: dict[str, int] = {}
    joined: dict[str, int] = {}
    for s in default_plan.events:
        ev = s.event
        if isinstance(ev.data, SaleOpened):
            opened[ev.data.sale_id] = ev.ts
            assert ev.ts < ev.data.starts_at
        elif ev.type == "viewer.joined":
            joined[ev.user_id] = ev.ts
        elif isinstance(ev.data, OrderPlaced):
            spec = specs[ev.data.sale_id]
            assert ev.data.sale_id in opened, "sale.opened precedes its orders"
            assert (ev.data.sku, ev.data.unit_price, ev.room_id) == (spec.sku, spec.price, spec.room_id)
            assert ev.user_id in joined, "buyers are viewers"


def test_duplicates_follow_the_configured_fraction() -> None:
    none = build_plan(SimulationParams(**{**SMALL.__dict__, "duplicate_fraction": 0.0}))
    assert expected(none).duplicates == 0
    many = build_plan(SimulationParams(**{**SMALL.__dict__, "duplicate_fraction": 0.5}))
    [s] = expected(many).sales.values()
    assert 0.35 * s.attempts < s.duplicates < 0.65 * s.attempts


# --- the audience ------------------------------------------------------------------------


def test_viewers_arrive_leave_and_some_go_stale(default_plan: Plan) -> None:
    p = default_plan.params
    joins = Counter(s.event.user_id for s in default_plan.events if s.event.type == "viewer.joined")
    left = {s.event.user_id: s.event.ts for s in default_plan.events if s.event.type == "viewer.left"}
    assert len(joins) == p.viewers and set(joins.values()) == {1}
    stale = p.viewers - len(left)
    assert 0 < stale < 3 * p.stale_fraction * p.viewers
    first: dict[str, str] = {}
    last_ts: dict[str, int] = {}
    for s in default_plan.events:
        if s.event.user_id in joins and s.event.type not in ("order.paid", "order.cancelled"):
            first.setdefault(s.event.user_id, s.event.type)
            last_ts[s.event.user_id] = s.event.ts
    assert set(first.values()) == {"viewer.joined"}, "nothing before viewer.joined"
    for user, ts in left.items():
        assert last_ts[user] == ts, "nothing after viewer.left"
    joined_at = {s.event.user_id: s.event.ts for s in default_plan.events if s.event.type == "viewer.joined"}
    # A curve, not a step: arrivals spread over the stream.
    early = sum(1 for t in joined_at.values() if t < default_plan.t0_ms + 10_000)
    assert 0.2 * p.viewers < early < 0.8 * p.viewers


def test_engagement_mix_channels_and_referrers(default_plan: Plan) -> None:
    by_type = expected(default_plan).by_type
    for t in ("viewer.liked", "viewer.commented", "viewer.shared", "product.clicked", "cart.added"):
        assert by_type.get(t, 0) > 0, t
    assert by_type["viewer.liked"] > by_type["viewer.commented"] > by_type["viewer.shared"]
    joins = [s.event for s in default_plan.events if s.event.type == "viewer.joined"]
    assert {e.channel for e in joins} == set(CHANNELS)
    assert all(e.referrer_id for e in joins if e.channel == "share_link")
    refs = Counter(e.referrer_id for e in joins if e.referrer_id)
    assert len(refs) > 3 and refs.most_common(1)[0][1] > 2 * refs.most_common()[-1][1], "a few top distributors"


def test_likes_are_bursty_around_announcements(default_plan: Plan) -> None:
    per_s = Counter((s.at_ms - default_plan.t0_ms) // 1000 for s in default_plan.events
                    if s.event.type == "viewer.liked")
    sale = default_plan.sales[0]
    around = [per_s[(sale.starts_at - default_plan.t0_ms) // 1000 + i] for i in range(0, 3)]
    median = sorted(per_s.values())[len(per_s) // 2]
    assert min(around) > 1.5 * median


# --- payments ----------------------------------------------------------------------------


def test_optimistic_payments_only_for_reference_accepted_orders(default_plan: Plan) -> None:
    outcomes = reference_outcomes(default_plan.sales, placed(default_plan), default_plan.intents)
    orders = {e.data.order_id: e for e in placed(default_plan)}  # type: ignore[attr-defined]
    paid = [s.event for s in default_plan.events if isinstance(s.event.data, OrderPaid)]
    assert paid
    for ev in paid:
        assert isinstance(ev.data, OrderPaid)
        order = orders[ev.data.order_id]
        assert isinstance(order.data, OrderPlaced)
        assert outcomes[ev.data.order_id].accepted
        assert ev.data.amount == order.data.qty * order.data.unit_price
        assert ev.user_id == order.user_id and ev.ts > order.ts
    intents = default_plan.intents
    want = {o for o, r in outcomes.items() if r.accepted and intents[o].action == "pay"}
    assert {e.data.order_id for e in paid} == want  # type: ignore[attr-defined]
    accepted = sum(1 for r in outcomes.values() if r.accepted)
    assert 0.5 < len(want) / accepted < 0.9, "about pay_fraction of accepted orders get paid"


def test_plan_without_payments_keeps_intents_for_every_order() -> None:
    plan = build_plan(SMALL, include_payments=False)
    assert not any(s.event.type in ("order.paid", "order.cancelled") for s in plan.events)
    assert set(plan.intents) == {e.data.order_id for e in placed(plan)}  # type: ignore[attr-defined]
    actions = Counter(i.action for i in plan.intents.values())
    assert set(actions) == {"pay", "cancel", "abandon"}


# --- the reference stock model -----------------------------------------------------------


def _order(oid: str, user: str, ts: int, qty: int = 1) -> Event:
    # new_event, not make_event: the reference model is exercised on a small clock that starts at 0
    return new_event(OrderPlaced(order_id=oid, sale_id="s", sku="k", qty=qty, unit_price=100),
                      event_id=f"e-{oid}", ts=ts, room_id="r", user_id=user)


def _intent(oid: str, user: str, action: str, delay: int, qty: int = 1) -> Intent:
    return Intent(oid, "s", "k", "r", user, "other", None, qty, 100, 0, action, delay)


def test_reference_model_rules() -> None:
    spec = SaleSpec("s", "k", "r", 100, 2, 2, 10, 0, 1000, 100_000, True)
    orders = [_order("early", "u0", 999), _order("a", "u1", 1000), _order("big", "u2", 1001, qty=3),
              _order("b", "u2", 1002), _order("c", "u3", 1003), _order("b2", "u2", 1004), _order("a", "u1", 1005),
              _order("d", "u4", 12_000), _order("e", "u5", 12_001)]
    intents = {"a": _intent("a", "u1", "pay", 500), "b": _intent("b", "u2", "abandon", 10_000)}
    out = reference_outcomes([spec], orders, intents)
    assert out["early"].reason == "sale_not_active"
    assert out["a"].accepted and out["a"].final == "sold"
    assert out["big"].reason == "limit_exceeded"
    assert out["b"].accepted and out["b"].final == "expired"
    assert (out["c"].reason, out["b2"].reason) == ("sold_out", "sold_out")
    assert out["d"].accepted, "b's reservation expired at 11002 and its unit came back"
    assert out["e"].reason == "sold_out"


def test_reference_model_never_oversells(default_plan: Plan) -> None:
    outcomes = reference_outcomes(default_plan.sales, placed(default_plan), default_plan.intents)
    by_sale: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in placed(default_plan):
        d = e.data
        assert isinstance(d, OrderPlaced)
        r = outcomes[d.order_id]
        if r.accepted:
            i = default_plan.intents[d.order_id]
            by_sale[d.sale_id].append((e.ts, d.qty))
            if r.final != "sold":
                ttl = default_plan.sales[0].ttl_s * 1000
                end = e.ts + (i.delay_ms if r.final == "cancelled" else ttl)
                by_sale[d.sale_id].append((end, -d.qty))
    for sale in default_plan.sales:
        held = 0
        for _, delta in sorted(by_sale[sale.sale_id], key=lambda x: (x[0], x[1])):
            held += delta
            assert held <= sale.allotment


# --- expected recount --------------------------------------------------------------------


def test_expected_counts_add_up(default_plan: Plan) -> None:
    exp = expected(default_plan)
    assert sum(exp.by_type.values()) == sum(exp.by_topic.values()) == exp.sends == len(default_plan)
    assert exp.by_topic == dict(Counter(logical_topic(s.event.type) for s in default_plan.events))
    assert exp.unique_events + exp.duplicates == exp.sends


def test_a_hundred_thousand_attempts() -> None:
    plan = build_plan(SimulationParams(viewers=3000, sales=1, allotment=10_000), include_payments=False)
    [s] = expected(plan).sales.values()
    assert s.attempts == 100_000


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        SimulationParams(viewers=0)
    with pytest.raises(ValueError):
        SimulationParams(pay_fraction=0.9, cancel_fraction=0.2)
    with pytest.raises(ValueError):
        SimulationParams(duration_s=20, first_sale_at_s=30)
    with pytest.raises(ValueError):
        build_plan(SMALL, run_id="has space")


def test_sale_windows_fit_in_the_stream() -> None:
    for sales in (1, 2, 5):
        p = SimulationParams(sales=sales, duration_s=60.0)
        ws = p.sale_windows()
        assert len(ws) == sales
        assert all(w.announce_s < w.open_s < w.end_s <= p.duration_s - 1 for w in ws)
        assert [w.open_s for w in ws] == sorted(w.open_s for w in ws)


# --- the runner's loop, with an in-memory sink -------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.calls: list[list[Event]] = []

    async def publish_many(self, events: Iterable[Event]) -> Sequence[Any]:
        self.calls.append(list(events))
        return []


class ReferenceDecisions:
    """Answers like the reference model would (stands in for a worker in this unit test); the runner
    only asks about orders it has sent."""

    def __init__(self, plan: Plan) -> None:
        self.outcomes = reference_outcomes(plan.sales, placed(plan), plan.intents)
        self.asked: set[str] = set()

    def recent(self, sale_id: str, order_id: str) -> Decision | None:
        self.asked.add(order_id)
        r = self.outcomes.get(order_id)
        if r is None:
            return None
        assert r.sale_id == sale_id, (order_id, sale_id, r.sale_id)
        return Decision(order_id, r.sale_id, "accepted" if r.accepted else "rejected", r.reason,
                        "reserved" if r.accepted else "rejected", 1, None)


class Silent:
    def recent(self, sale_id: str, order_id: str) -> Decision | None:
        return None


def sent_events(sink: ListSink) -> list[Event]:
    return [e for call in sink.calls for e in call]


async def test_runner_sends_the_whole_plan_in_chunks() -> None:
    plan = build_plan(SMALL)
    sink = ListSink()
    stats = await Runner(plan, sink, speed=None, chunk_events=700).run()
    assert [e.event_id for e in sent_events(sink)] == [s.event.event_id for s in plan.events]
    assert max(len(c) for c in sink.calls) <= 700 and len(sink.calls) >= len(plan) // 700
    assert stats.sent == len(plan) and dict(stats.by_topic) == expected(plan).by_topic


async def test_runner_pays_accepted_orders_on_feedback() -> None:
    plan = build_plan(SMALL, include_payments=False)
    sink = ListSink()
    decisions = ReferenceDecisions(plan)
    stats = await Runner(plan, sink, speed=None, decisions=decisions).run()
    assert stats.mode == "feedback" and not stats.fell_back
    reference = build_plan(SMALL)  # the same buyers, paying for what the reference model accepts
    follow = {e.event_id for e in sent_events(sink) if e.type in ("order.paid", "order.cancelled")}
    assert follow == {s.event.event_id for s in reference.events if s.event.type in ("order.paid", "order.cancelled")}
    assert stats.accepted == sum(1 for r in decisions.outcomes.values() if r.accepted)
    assert decisions.asked <= {e.data.order_id for e in placed(plan)}  # type: ignore[attr-defined]


async def test_runner_falls_back_when_no_decision_comes() -> None:
    plan = build_plan(SMALL, include_payments=False)
    sink = ListSink()
    stats = await Runner(plan, sink, speed=None, decisions=Silent(), feedback_grace_s=0.2).run()
    assert stats.fell_back and stats.mode == "optimistic"
    assert Counter(e.type for e in sent_events(sink)) == Counter(expected(build_plan(SMALL)).by_type)


async def test_runner_real_time_follows_the_clock() -> None:
    plan = build_plan(SimulationParams(viewers=50, duration_s=6.0, sales=1, allotment=5, first_sale_at_s=1.0,
                                       sale_window_s=3.0, ttl_s=2))
    sink = ListSink()
    loop = asyncio.get_running_loop()
    start = loop.time()
    stamps: list[float] = []

    class Stamping(ListSink):
        async def publish_many(self, events: Iterable[Event]) -> Sequence[Any]:
            evs = list(events)
            stamps.append(loop.time() - start)
            sink.calls.append(evs)
            return []

    await Runner(plan, Stamping(), speed=4.0, tick_s=0.01).run()
    # No call may carry an event that was not due yet on the 4x clock.
    for at, call in zip(stamps, sink.calls, strict=True):
        assert max(e.ts for e in call) - plan.t0_ms <= (at + 0.05) * 4000
    assert len(sink.calls) > 5, "sent as the clock advances, not all at once"


# --- the command line --------------------------------------------------------------------


def test_cli_help_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        simulator.main(["--help"], environ={})
    assert exc.value.code == 0
    assert "--attempts-factor" in capsys.readouterr().out
    assert simulator.main(["--dry-run", "--viewers", "300", "--sales", "1", "--allotment", "20",
                           "--attempts-factor", "4", "--run-id", "x"], environ={}) == 0
    out = json.loads(capsys.readouterr().out)
    [sale] = out["sales"].values()
    assert sale["attempts"] == 80 and sale["allotment"] == 20


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulator.main(["--viewers", "0", "--dry-run"], environ={}) == 2
    assert simulator.main(["--speed", "0"], environ={}) == 2
    assert simulator.main(["--run-id", "a b"], environ={}) == 2
    assert simulator.main([], environ={"FLASHSALE_SIM_SPEED": "fast"}) == 2
    assert "FLASHSALE_SIM_SPEED" in capsys.readouterr().err
