"""``flashsale audit`` agrees with itself on a live stack (issue 13, item 7): three runs while orders keep
arriving give the same verdict and exit 0; a tampered settled sale exits 1 naming it. Real broker, Redis
and worker; the audit is the CLI, as an SRE runs it."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import pytest
import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events, read_topic
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerHandle
from tests.integration.stock.helpers import closed, order, paid, sale_opened

pytestmark = pytest.mark.integration


async def run_audit(broker: Broker, redis_url: str, prefix: str, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "audit", "--broker", broker.url, "--redis", redis_url,
        "--prefix", prefix, *extra, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


def verdict(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("verdict:")]
    assert len(lines) == 1, out
    return lines[0]


async def test_three_runs_on_a_live_stack_agree_and_a_tampered_sale_is_named(
        broker: Broker, worker: WorkerHandle, topic_prefix: str, redis_client: aioredis.Redis,
        redis_server: RedisServer) -> None:
    names = TopicNames(topic_prefix)
    now = int(time.time() * 1000)
    # A settled sale: sold out, paid, closed, nothing pending.
    settled = [sale_opened("done", "sku-d", allotment=3, ttl_s=3600, ts=now - 5000, starts=now - 6000,
                           ends=now + 600_000)]
    settled += [order(f"d{i}", f"u{i}", now - 4000 + i, sale_id="done", sku="sku-d") for i in range(6)]
    await produce_events(broker.bootstrap, topic_prefix, settled)
    decided = await read_topic(broker.bootstrap, names.decisions,
                               lambda xs: {d["data"].get("order_id") for d in xs} >= {f"d{i}" for i in range(6)},
                               timeout=60)
    winners = sorted({(d["data"]["order_id"], d["user_id"]) for d in decided if d["type"] == "order.accepted"})
    assert len(winners) == 3
    await produce_events(broker.bootstrap, topic_prefix, [paid(o, u, now - 3000, sale_id="done", sku="sku-d")
                                                          for o, u in winners])
    await produce_events(broker.bootstrap, topic_prefix, [closed("done", "sku-d", ts=now - 2000)])
    deadline = time.monotonic() + 60
    while (await redis_client.hget(rk.sale("done"), "status")) != b"closed" or \
            (await redis_client.hget(rk.sale("done"), "sold")) != b"3":
        assert time.monotonic() < deadline, await redis_client.hgetall(rk.sale("done"))
        await asyncio.sleep(0.2)

    # A live sale: open, orders arriving the whole time the audits run.
    await produce_events(broker.bootstrap, topic_prefix, [sale_opened("live", "sku-l", allotment=50, ttl_s=3600,
                                                                      ts=now, starts=now - 1000,
                                                                      ends=now + 600_000)])
    stop = asyncio.Event()

    async def traffic() -> int:
        n = 0
        while not stop.is_set():
            t = int(time.time() * 1000)
            await produce_events(broker.bootstrap, topic_prefix, [
                order(f"l{n + i}", f"lu{(n + i) % 40}", t + i, sale_id="live", sku="sku-l") for i in range(20)])
            n += 20
            await asyncio.sleep(0.05)
        return n

    task = asyncio.create_task(traffic())
    try:
        runs = [await run_audit(broker, redis_server.url, topic_prefix, "--settle", "5") for _ in range(3)]
    finally:
        stop.set()
        sent = await task
    assert sent > 0
    for rc, out in runs:
        assert rc == 0, out
        assert "live: in flight" in out, out
    assert {verdict(out) for _, out in runs} == {"verdict: OK, no differences"}

    # Tamper with the settled sale: Redis says a refused order was sold. Named, exit 1, live or not.
    loser = next(f"d{i}" for i in range(6) if f"d{i}" not in {o for o, _ in winners})
    rec = orjson.loads(await redis_client.hget(rk.sale_orders("done"), loser))
    await redis_client.hset(rk.sale_orders("done"), loser, orjson.dumps({**rec, "s": "sold"}))
    for _ in range(2):
        rc, out = await run_audit(broker, redis_server.url, topic_prefix, "--settle", "5")
        assert rc == 1, out
        assert verdict(out) == "verdict: DIFF in done", out
        assert "done: " in out and "DIFF" in out
