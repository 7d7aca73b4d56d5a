"""The gateway as a front door (issue 14): coalesced order records, decisions that survive a busy Redis
pool, admission control, and N processes on one port; real broker, redis-server and worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
import redis.asyncio as aioredis

from flashsale.embedded import free_port, python_module
from producers.sdk import Publisher
from schemas import keys
from schemas.codec import decode_record
from schemas.events import SaleOpened, make_event
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.integration.test_gateway import TOKEN, Gateway, GatewayFactory, gateway, order_body

pytestmark = pytest.mark.integration
__all__ = ["gateway"]  # the fixture, shared with test_gateway.py


async def open_sale(bootstrap: str, prefix: str, sale_id: str, allotment: int, *, redis: aioredis.Redis) -> None:
    now = int(time.time() * 1000)
    async with Publisher(bootstrap, topic_prefix=prefix) as pub:
        await pub.publish(
            make_event(
                SaleOpened(
                    sale_id=sale_id,
                    sku="sku-1",
                    price=990,
                    allotment=allotment,
                    per_user_limit=1,
                    starts_at=now - 1000,
                    ends_at=now + 600_000,
                    reservation_ttl_s=600,
                ),
                event_id=f"open-{sale_id}",
                ts=now,
                room_id="room-1",
                user_id="host",
            )
        )
    for _ in range(400):  # the worker applied it
        if await redis.hget(keys.sale(sale_id), "allotted") is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sale {sale_id} was never opened")


async def post_many(gw: Gateway, sale_id: str, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """POST every order at once, each on its own connection (no client-side connection limit)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post(
                f"{gw.url}/v1/sales/{sale_id}/orders",
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            ) as resp:
                return resp.status, orjson.loads(await resp.read())

        return list(await asyncio.gather(*(one(b) for b in bodies)))


async def sale_counts(redis: aioredis.Redis, sale_id: str) -> dict[str, int]:
    raw: dict[bytes, bytes] = await redis.hgetall(keys.sale(sale_id))  # type: ignore[assignment]
    names = ("allotted", "available", "reserved", "sold", "attempts")
    return {k.decode(): int(v) for k, v in raw.items() if k.decode() in names}


async def test_concurrent_orders_share_records_and_each_gets_its_own_decision(
    gateway: GatewayFactory,
    broker: Broker,
    topics: dict[str, str],
    topic_prefix: str,
    worker: Any,
    redis_client: aioredis.Redis,
) -> None:
    """60 concurrent orders for a sale of 25: the worker receives batched records, exactly 25 are
    accepted, every order gets one answer of its own (a bad price is rejected `invalid`, a bad body is
    400 and never published), and nothing is oversold."""
    await open_sale(broker.bootstrap, topic_prefix, "sale-c", 25, redis=redis_client)
    async with gateway(decision_timeout_ms=20_000, coalesce_ms=50, admission=False) as gw:
        bodies = [order_body(order_id=f"o-{i}", user_id=f"u-{i}") for i in range(60)]
        bodies[7]["unit_price"] = 1  # not the sale's price: the worker rejects this one alone
        bodies[8]["qty"] = 0  # invalid at the door: 400, never in a record
        answers = await post_many(gw, "sale-c", bodies)
        records = gw.metric("flashsale_gateway_records_total")
        by_record = gw.metric("flashsale_gateway_order_record_events_count")

    statuses = [s for s, _ in answers]
    assert statuses.count(400) == 1 and answers[8][1]["errors"][0]["field"] == "qty"
    assert statuses.count(200) == 59 and 202 not in statuses
    decided = {b["order_id"]: b for s, b in answers if s == 200}
    assert sorted(decided) == sorted(f"o-{i}" for i in range(60) if i != 8)  # each its own answer
    accepted = [o for o, b in decided.items() if b["outcome"] == "accepted"]
    assert len(accepted) == 25
    assert decided["o-7"]["reason"] == "invalid"
    assert {b["reason"] for o, b in decided.items() if b["outcome"] == "rejected" and o != "o-7"} == {"sold_out"}
    for o in accepted:  # what the client was told is what the stock core holds
        raw = await redis_client.hget(keys.sale_orders("sale-c"), o)
        assert raw is not None
        rec = orjson.loads(raw)
        assert rec["s"] == "reserved" and rec["u"] == decided[o]["order_id"].replace("o-", "u-")
    counts = await sale_counts(redis_client, "sale-c")
    assert counts["reserved"] + counts["sold"] == counts["allotted"] == 25 and counts["available"] == 0  # 0 oversold

    msgs = await read_topic(
        broker.bootstrap,
        topics["orders"],
        lambda ms: sum(len(decode_record(m.value).events) for m in ms) >= 60,
        timeout=15,
        raw=True,
    )
    per_record = [[e.event_id for e in decode_record(m.value).events if e.type == "order.placed"] for m in msgs]
    per_record = [r for r in per_record if r]
    assert max(len(r) for r in per_record) > 1  # the worker saw batched envelopes
    placed = [e for r in per_record for e in r]
    assert len(placed) == len(set(placed)) == 59  # every valid order published exactly once
    assert records == len(per_record) < 59 and by_record == records


async def test_a_tiny_redis_pool_never_turns_a_decided_order_into_pending(
    gateway: GatewayFactory,
    broker: Broker,
    topics: dict[str, str],
    topic_prefix: str,
    worker: Any,
    redis_client: aioredis.Redis,
) -> None:
    """Regression (issue 14: 34 % of decided orders answered 202 at 512 connections): with 2 Redis
    connections and Redis stalled for 6 s under 400 waiting orders, every order still gets its decision.
    The old gateway read Redis for every waiting order, ran out of pool connections and answered 202."""
    await open_sale(broker.bootstrap, topic_prefix, "sale-p", 1000, redis=redis_client)
    async with gateway(decision_timeout_ms=30_000, soldout_cache_ms=10_000, redis_pool=2) as gw:
        [(status, body)] = await post_many(gw, "sale-p", [order_body(order_id="warm", user_id="warm")])
        assert status == 200 and body["outcome"] == "accepted"  # the sale's stock is cached for 10 s now
        await redis_client.execute_command("CLIENT", "PAUSE", "6000", "ALL")  # Redis answers nobody for 6 s
        answers = await post_many(gw, "sale-p", [order_body(order_id=f"p-{i}", user_id=f"u-{i}") for i in range(400)])
        pending = gw.metric("flashsale_gateway_order_decisions_total", outcome="pending")
    assert [s for s, _ in answers].count(200) == 400, {s for s, _ in answers}
    assert pending == 0
    assert sum(b["outcome"] == "accepted" for _, b in answers) == 400
    counts = await sale_counts(redis_client, "sale-p")
    assert counts["reserved"] == 401 and counts["available"] == 599


async def test_admission_answers_retry_without_kafka_while_units_are_spoken_for(
    gateway: GatewayFactory, broker: Broker, topics: dict[str, str], redis_client: aioredis.Redis
) -> None:
    """No worker: published orders stay in flight. With 3 units available, 3 orders are published and
    the others are answered 429 `units_in_flight` at once; the sold-out flag still answers 409; once the
    orders in flight are answered, the next one is published again; a retry of a decided order gets
    its decision."""
    await redis_client.hset(
        keys.sale("sale-a"),
        mapping={"sale_id": "sale-a", "sku": "sku-1", "available": "3", "soldout": "0", "status": "open"},
    )
    async with gateway(decision_timeout_ms=1500, soldout_cache_ms=10_000) as gw:
        answers = await post_many(gw, "sale-a", [order_body(order_id=f"a-{i}", user_id=f"u-{i}") for i in range(8)])
        assert sorted(s for s, _ in answers) == [202] * 3 + [429] * 5
        refused = [b for s, b in answers if s == 429]
        assert all(
            (b["error"], b["reason"], b["outcome"]) == ("units_in_flight", "units_in_flight", "retry") for b in refused
        )
        assert gw.metric("flashsale_gateway_rejected_total", reason="units_in_flight") == 5
        assert gw.state.inflight.total() == 0
        status, _ = (await post_many(gw, "sale-a", [order_body(order_id="a-late", user_id="u-late", qty=3)]))[0]
        assert status == 202  # nothing in flight any more: published (the worker would decide it)

        record = {"s": "reserved", "u": "u-9", "q": 1, "p": 990, "d": 1, "e": "x", "r": "", "t": 1, "k": "sku-1"}
        await redis_client.hset(keys.sale_orders("sale-a"), "a-9", orjson.dumps(record))
        gw.state.inflight.add("sale-a", 3)  # as if three orders were waiting
        [(status, body)] = await post_many(gw, "sale-a", [order_body(order_id="a-9", user_id="u-9")])
        assert status == 200 and body["outcome"] == "accepted"  # its own decision, not "retry"
        gw.state.inflight.remove("sale-a", 3)
    msgs = await read_topic(broker.bootstrap, topics["orders"], lambda ms: len(ms) >= 4, timeout=10)
    await asyncio.sleep(0.3)
    published = sorted(m["data"]["order_id"] for m in msgs)
    assert published == sorted(["a-late", *(b["order_id"] for s, b in answers if s == 202)])


async def test_processes_share_one_port_and_stop_with_their_parent(
    worker_env: dict[str, str], topics: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **worker_env,
        "FLASHSALE_GATEWAY_PORT": str(port),
        "FLASHSALE_GATEWAY_TOKEN": TOKEN,
        "FLASHSALE_AUTO_CREATE_TOPICS": "false",
    }
    proc = python_module("producers.gateway", ["--processes", "2"], tmp_path, "gateway", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(400):  # interpreters starting and connecting to Kafka
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as resp:
                        if resp.status == 200:
                            break
                assert proc.alive(), proc.log_path.read_text()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway never became ready")
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        for _ in range(200):  # both bound the port (SO_REUSEPORT)
            listening = [
                c
                for c in children
                if any(
                    conn.status == psutil.CONN_LISTEN and conn.laddr.port == port for conn in c.net_connections("tcp")
                )
            ]
            if len(listening) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(listening) == 2
        os.kill(proc.pid, signal.SIGTERM)
        code = await asyncio.to_thread(proc.popen.wait, 30)
        assert code == 0, proc.log_path.read_text()
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        proc.stop()
