"""The simulator against the real broker (and, for feedback, a real worker and redis-server)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from producers import simulator
from producers.decisions import DecisionWaiter
from producers.sdk import Publisher
from producers.simulation.expected import expected
from producers.simulation.model import SimulationParams
from producers.simulation.oracle import reference_outcomes
from producers.simulation.plan import build_plan
from producers.simulation.plan_types import Plan
from producers.simulation.runner import Runner
from producers.simulation.settings import get_settings
from schemas import keys
from schemas.events import OrderPlaced
from schemas.order_record import parse_order_record
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.workers import WorkerHandle, start_worker

pytestmark = pytest.mark.integration

SMALL_ARGS = ["--viewers", "300", "--duration", "30", "--sales", "2", "--allotment", "30", "--first-sale-at", "5",
              "--sale-window", "10", "--ttl", "6", "--seed", "7"]


def flatten(records: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in records:
        obj = orjson.loads(r.value)
        out.extend(obj if isinstance(obj, list) else [obj])
    return out


def count(records: list[Any]) -> int:
    n = 0
    for r in records:
        n += len(obj) if isinstance(obj := orjson.loads(r.value), list) else 1
    return n


async def read_events(bootstrap: str, topic: str, n: int, within_s: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
    """Records and events of a topic, read from the start until at least ``n`` events arrived (or timeout)."""
    records = await read_topic(bootstrap, topic, lambda xs: count(xs) >= n, timeout=within_s, raw=True)
    return len(records), flatten(records)


def placed(plan: Plan) -> list[Any]:
    return [s.event for s in plan.events if s.event.type == "order.placed" and not s.duplicate]


def test_cli_publishes_exactly_the_plan(broker: Broker, topic_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"FLASHSALE_BROKER_URL": broker.url, "FLASHSALE_TOPIC_PREFIX": topic_prefix, "FLASHSALE_PARTITIONS": "4"}
    args = [*SMALL_ARGS, "--afap", "--no-feedback", "--json", "--quiet", "--run-id", "cli1", "--chunk", "1000"]
    assert simulator.main(args, environ=env) == 0
    summary = json.loads(capsys.readouterr().out)
    plan = build_plan(simulator.params_from(simulator.parse(args, get_settings(env))), run_id="cli1")
    exp = expected(plan)
    assert summary["mode"] == "plan" and summary["sent"] == exp.sends and summary["by_topic"] == exp.by_topic
    assert summary["publish_calls"] >= exp.sends // 1000

    names = TopicNames(topic_prefix)
    sent_ids: Counter[str] = Counter()
    for logical, n in exp.by_topic.items():
        n_records, events = asyncio.run(read_events(broker.bootstrap, names.name(logical), n))
        assert len(events) == n, f"{logical}: every planned send is on the topic, once"
        assert n_records < n, f"{logical}: events travel in batched records"
        sent_ids.update(e["event_id"] for e in events)
    assert sent_ids == Counter(s.event.event_id for s in plan.events)


@pytest.fixture
def worker(worker_env: dict[str, str], topics: dict[str, str], tmp_path: Path) -> Any:
    handle = start_worker({**worker_env, "FLASHSALE_AGENTS": "stock"}, tmp_path)
    yield handle
    handle.process.stop()


async def test_feedback_pays_exactly_the_accepted_orders(broker: Broker, worker: WorkerHandle, topic_prefix: str,
                                                         redis_client: aioredis.Redis) -> None:
    params = SimulationParams(viewers=300, duration_s=16.0, sales=1, allotment=40, first_sale_at_s=3.0,
                              sale_window_s=10.0, ttl_s=5, seed=11)
    plan = build_plan(params, run_id="fb", t0_ms=int(time.time() * 1000), include_payments=False)
    names = TopicNames(topic_prefix)
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub, \
            DecisionWaiter(broker.bootstrap, names.decisions) as waiter:
        stats = await Runner(plan, pub, speed=2.0, decisions=waiter, redis=redis_client,
                             feedback_grace_s=30.0, decision_timeout_s=60.0).run()
    [sale] = plan.sales
    exp = expected(plan).sales[sale.sale_id]
    assert stats.mode == "feedback" and not stats.fell_back and stats.undecided == 0
    assert stats.decided == stats.orders_sent == exp.attempts

    records = await redis_client.hgetall(keys.sale_orders(sale.sale_id))
    states = {k.decode(): parse_order_record(v).state for k, v in records.items()}
    assert len(states) == exp.attempts
    accepted = {oid for oid, s in states.items() if s != "rejected"}
    assert stats.accepted == len(accepted) > 0
    assert len(accepted) < exp.attempts, "the burst is far above the allotment"

    _, events = await read_events(broker.bootstrap, names.orders, stats.by_topic["orders"])
    assert len(events) == stats.by_topic["orders"]
    paid = {e["data"]["order_id"]: e for e in events if e["type"] == "order.paid"}
    cancelled = {e["data"]["order_id"] for e in events if e["type"] == "order.cancelled"}
    intents = plan.intents
    assert set(paid) == {oid for oid in accepted if intents[oid].action == "pay"}, "paid iff accepted and paying"
    assert cancelled == {oid for oid in accepted if intents[oid].action == "cancel"}
    assert all(e["data"]["amount"] == intents[oid].qty * intents[oid].unit_price for oid, e in paid.items())
    sale_hash = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(keys.sale(sale.sale_id))).items()}
    assert int(sale_hash["sold"]) <= int(sale_hash["allotted"]) == params.allotment
    assert int(sale_hash["attempts"]) == exp.attempts


async def test_without_a_worker_falls_back_to_optimistic_payments(broker: Broker, topics: dict[str, str],
                                                                  topic_prefix: str) -> None:
    params = SimulationParams(viewers=200, duration_s=20.0, sales=1, allotment=20, first_sale_at_s=3.0,
                              sale_window_s=10.0, ttl_s=5, seed=5)
    plan = build_plan(params, run_id="nofb", include_payments=False)
    names = TopicNames(topic_prefix)
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub, \
            DecisionWaiter(broker.bootstrap, names.decisions) as waiter:
        stats = await Runner(plan, pub, speed=None, decisions=waiter, feedback_grace_s=1.0).run()
    assert stats.fell_back and stats.mode == "optimistic" and stats.decided == 0
    outcomes = reference_outcomes(plan.sales, placed(plan), plan.intents)
    want = {oid for oid, r in outcomes.items() if r.accepted and plan.intents[oid].action == "pay"}
    _, events = await read_events(broker.bootstrap, names.orders, stats.by_topic["orders"])
    assert len(events) == stats.by_topic["orders"]
    assert {e["data"]["order_id"] for e in events if e["type"] == "order.paid"} == want
    assert sum(1 for e in events if e["type"] == OrderPlaced.TYPE) == expected(plan).sales[plan.sales[0].sale_id].sends
