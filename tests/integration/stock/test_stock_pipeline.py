"""The stock core end to end: real Tansu, real redis-server, a real worker process."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from flashsale.audit import audit
from schemas import keys as rk
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events, produce_raw, read_topic
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerHandle, start_worker
from tests.integration.stock.helpers import burst, order, sale_opened

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(worker_env: dict[str, str], topics: dict[str, str], tmp_path: Any) -> Any:
    """A worker running the stock agent only (the counters agent has its own tests)."""
    handle = start_worker({**worker_env, "FLASHSALE_AGENTS": "stock"}, tmp_path)
    yield handle
    handle.process.stop()


async def sale_state(client: aioredis.Redis, sale_id: str = "s1") -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await client.hgetall(rk.sale(sale_id))).items()}


def answered(items: list[dict[str, Any]]) -> set[str]:
    return {d["data"]["order_id"] for d in items if d["type"] in ("order.accepted", "order.rejected")}


async def test_burst_through_kafka_then_replay(broker: Broker, worker: WorkerHandle, topic_prefix: str,
                                               redis_client: aioredis.Redis, redis_server: RedisServer) -> None:
    names = TopicNames(topic_prefix)
    now = int(time.time() * 1000)  # the sweeper runs on the wall clock: reservations must be current
    b = burst(users=20_000, attempts=100_000, t0=now)
    opened = sale_opened(allotment=1000, limit=2, ttl_s=3600, ts=now, starts=now - 1000, ends=now + 3_600_000)
    await produce_events(broker.bootstrap, topic_prefix, [opened] + b.events)
    decisions = await read_topic(broker.bootstrap, names.decisions, lambda xs: answered(xs) >= b.attempts,
                                 timeout=240)
    assert answered(decisions) == b.attempts, "every attempt answered"

    st = await sale_state(redis_client)
    assert int(st["allotted"]) == int(st["available"]) + int(st["reserved"]) + int(st["sold"]) == 1000
    accepted = {d["data"]["order_id"]: d for d in decisions if d["type"] == "order.accepted"}
    assert len(accepted) == int(st["accepted"])
    units = Counter()
    for d in accepted.values():
        units[d["user_id"]] += d["data"]["qty"]
    assert sum(units.values()) == 1000, "exactly the allotment accepted, 0 oversold"
    assert max(units.values()) <= 2, "per-user limit held"
    assert int(st["attempts"]) == len(b.attempts)

    # Replay the whole order topic: every record once more, in order. Nothing may change.
    orders_before = await redis_client.hgetall(rk.sale_orders("s1"))
    msgs = await read_topic(broker.bootstrap, names.orders, lambda xs: False, timeout=5, raw=True)
    msgs.sort(key=lambda m: (m.partition, m.offset))
    await produce_raw(broker.bootstrap, names.orders, [(m.key, m.value) for m in msgs])
    total = len(decisions)
    redecided = await read_topic(broker.bootstrap, names.decisions,
                                 lambda xs: len([d for d in xs if d["type"] != "sale.sold_out"])
                                 >= 2 * len([d for d in decisions if d["type"] != "sale.sold_out"]), timeout=240)
    assert len(redecided) >= total
    assert await sale_state(redis_client) == st
    assert await redis_client.hgetall(rk.sale_orders("s1")) == orders_before
    by_id: dict[str, set[bytes]] = {}
    for d in redecided:
        by_id.setdefault(d["event_id"], set()).add(orjson.dumps(d["data"], option=orjson.OPT_SORT_KEYS))
    assert all(len(v) == 1 for v in by_id.values()), "a replayed decision is identical to the first"

    # The audit agrees, and catches a corrupted counter.
    results = await audit(broker.bootstrap, redis_server.url, topic_prefix)
    assert [r.problems for r in results] == [[]]
    await redis_client.hincrby(rk.sale("s1"), "sold", 1)
    results = await audit(broker.bootstrap, redis_server.url, topic_prefix)
    assert any("allotted != available + reserved + sold" in p for p in results[0].problems)


async def test_expiry_and_dead_letters_through_kafka(broker: Broker, worker: WorkerHandle, topic_prefix: str,
                                                      redis_client: aioredis.Redis) -> None:
    names = TopicNames(topic_prefix)
    now = int(time.time() * 1000)
    await produce_raw(broker.bootstrap, names.orders, [(b"sku-1", b"{broken json"),
                                                       (b"sku-1", b'{"type":"order.teleported"}')])
    await produce_events(broker.bootstrap, topic_prefix, [
        sale_opened(allotment=2, ttl_s=1, ts=now, starts=now - 1000, ends=now + 600_000),
        order("a", "u1", now + 1), order("b", "u2", now + 2)])
    dead = await read_topic(broker.bootstrap, names.dead_letter, lambda xs: len(xs) >= 2, timeout=60)
    assert sorted(d["reason"] for d in dead) == ["malformed_json", "unknown_type"]
    decisions = await read_topic(broker.bootstrap, names.decisions,
                                 lambda xs: len([d for d in xs if d["type"] == "order.expired"]) >= 2, timeout=60)
    assert {d["data"]["order_id"] for d in decisions if d["type"] == "order.expired"} == {"a", "b"}
    st = await sale_state(redis_client)
    assert (st["available"], st["reserved"], st["sold"], st["expired"]) == ("2", "0", "0", "2")


def run_audit_cli(broker: Broker, redis_url: str, prefix: str) -> tuple[int, str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "flashsale", "audit", "--broker", f"kafka://{broker.bootstrap}",
                           "--redis", redis_url, "--prefix", prefix],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


async def test_audit_cli_passes_a_healthy_sale_and_fails_a_tampered_one(
        broker: Broker, worker: WorkerHandle, topic_prefix: str, redis_client: aioredis.Redis,
        redis_server: RedisServer) -> None:
    """`flashsale audit` prints a table and exits 0 on a sale with an early attempt, a sell-out, a
    payment and a refused payment; it exits 1 once Redis says an order was sold that nobody paid."""
    from tests.integration.stock.helpers import paid

    names = TopicNames(topic_prefix)
    now = int(time.time() * 1000)
    await produce_events(broker.bootstrap, topic_prefix, [order("early", "u0", now - 500)])  # before the sale
    await read_topic(broker.bootstrap, names.decisions, lambda xs: answered(xs) >= {"early"}, timeout=60)
    await produce_events(broker.bootstrap, topic_prefix, [
        sale_opened(allotment=2, ttl_s=3600, ts=now, starts=now - 1000, ends=now + 600_000),
        order("a", "u1", now + 1), order("b", "u2", now + 2), order("c", "u3", now + 3)])
    await read_topic(broker.bootstrap, names.decisions, lambda xs: answered(xs) >= {"a", "b", "c"}, timeout=60)
    await produce_events(broker.bootstrap, topic_prefix, [paid("a", "u1", now + 10), paid("c", "u3", now + 11)])
    await read_topic(broker.bootstrap, names.dead_letter, lambda xs: len(xs) >= 1, timeout=60)  # c: not accepted
    st = await sale_state(redis_client)
    assert (st["allotted"], st["available"], st["reserved"], st["sold"]) == ("2", "0", "1", "1")
    assert (st["attempts"], st["rej_sale_not_active"], st["rej_sold_out"]) == ("4", "1", "1")

    rc, out = run_audit_cli(broker, redis_server.url, topic_prefix)
    assert rc == 0, out
    assert "s1" in out and "OK" in out and "1 sales audited, 0 with differences" in out

    rec = orjson.loads(await redis_client.hget(rk.sale_orders("s1"), "b"))
    await redis_client.hset(rk.sale_orders("s1"), "b", orjson.dumps({**rec, "s": "sold"}))
    rc, out = run_audit_cli(broker, redis_server.url, topic_prefix)
    assert rc == 1, out
    assert "DIFF" in out and "sold without an order.paid" in out
