"""The stock core on a 3-master Redis Cluster: hash-tagged sale keys, EVALSHA routing, NOSCRIPT per node."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from schemas import keys as rk
from schemas.events import Event
from streams.metrics import WorkerMetrics
from streams.stock.logic import to_op
from streams.stock.store import StockStore, _sale_keys
from tests.harness.broker import Broker
from tests.harness.redis_cluster import RedisClusterHandle
from tests.integration.scaleout.helpers import (
    burst_with_workers,
    check_ownership,
    check_sales,
    measurement,
    multi_burst,
    record,
    skus_one_per_partition,
    text,
)
from tests.integration.stock.helpers import order, sale_opened

pytestmark = pytest.mark.integration

PARTITIONS = 4
ATTEMPTS_PER_SALE = 10_000


async def spread_sale_ids(client: RedisCluster, count: int) -> list[str]:
    """``count`` sale ids whose hash tags land on every primary (so every node takes writes)."""
    await client.initialize()
    primaries = {n.name for n in client.get_primaries()}
    chosen: list[str] = []
    nodes: set[str] = set()
    for n in range(10_000):
        sale_id = f"c{n}"
        found = client.get_node_from_key(rk.sale(sale_id))
        assert found is not None
        node = found.name
        if node not in nodes or (nodes == primaries and len(chosen) < count):
            chosen.append(sale_id)
            nodes.add(node)
        if len(chosen) == count:
            break
    assert nodes == primaries, "sales spread over every primary"
    return chosen


def node_client(client: RedisCluster, key: str) -> aioredis.Redis:
    node = client.get_node_from_key(key)
    assert node is not None
    return aioredis.Redis(host=node.host, port=int(node.port))


def op(event: Event) -> dict[str, Any]:
    out = to_op(event)
    assert out is not None
    return out


async def test_cluster_is_up_and_sale_keys_share_a_slot(redis_cluster: RedisClusterHandle,
                                                        cluster_client: RedisCluster) -> None:
    for port in redis_cluster.ports:
        node = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            raw = await node.execute_command("CLUSTER", "INFO")
        finally:
            await node.aclose()
        info = raw.decode() if isinstance(raw, bytes) else str(raw)
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:3" in info and "cluster_size:3" in info
    for sale_id in ("s1", "flash-42", "c0"):
        assert len({key_slot(k.encode()) for k in _sale_keys(sale_id)}) == 1, "one sale, one slot"
    assert len(await spread_sale_ids(cluster_client, 4)) == 4


async def test_noscript_on_one_node_reloads_and_reruns_only_there(redis_cluster: RedisClusterHandle,
                                                                   cluster_client: RedisCluster) -> None:
    """A node that lost its script cache (restart, failover) answers NOSCRIPT; the store loads the
    scripts on every primary and re-runs only the calls that failed, so ops already applied on the
    other nodes are not replayed (a replay would be harmless, but would come back flagged replay)."""
    now = int(time.time() * 1000)
    sales = await spread_sale_ids(cluster_client, 4)
    store = StockStore(cluster_client, WorkerMetrics())
    opened = await store.apply({s: [op(sale_opened(sale_id=s, sku=f"k{s}", ts=now, starts=now - 1000,
                                                   ends=now + 600_000, room=f"room-{s}"))] for s in sales}, now)
    assert all(r.error is None for r in opened.values())

    victim = node_client(cluster_client, rk.sale(sales[0]))
    try:
        await victim.script_flush()
        assert await victim.script_exists(store.stock.sha) == [False]
        res = await store.apply({s: [op(order(f"o-{s}", "u1", now, sale_id=s, sku=f"k{s}"))] for s in sales}, now)
        assert {s: (r.error, r.results and r.results[0]["out"], r.results and r.results[0]["replay"])
                for s, r in res.items()} == {s: (None, "accepted", False) for s in sales}
        assert await victim.script_exists(store.stock.sha, store.drain.sha, store.sweep_script.sha) == [True] * 3
    finally:
        await victim.aclose()
    assert set(await store.active_sales()) == set(sales)
    stocks, _ = await store.sweep(sales, now)
    assert {(s.sale_id, s.available, s.reserved) for s in stocks} == {(s, 999, 1) for s in sales}


async def test_burst_two_workers_on_cluster(broker: Broker, worker_env: dict[str, str], topics: dict[str, str],
                                            topic_prefix: str, redis_cluster: RedisClusterHandle,
                                            cluster_client: RedisCluster, tmp_path: Path,
                                            artifacts_dir: Path) -> None:
    skus = skus_one_per_partition(PARTITIONS)
    sale_ids = await spread_sale_ids(cluster_client, len(skus))
    b = multi_burst(dict(zip(sale_ids, skus, strict=True)), ATTEMPTS_PER_SALE, int(time.time() * 1000))
    env = {**worker_env, "FLASHSALE_REDIS_URL": redis_cluster.url, "FLASHSALE_REDIS_CLUSTER": "true"}

    out = await burst_with_workers(env, 2, tmp_path, broker.bootstrap, topic_prefix, b, PARTITIONS)

    async def sale_state(sale_id: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in (await cluster_client.hgetall(rk.sale(sale_id))).items()}

    async def read_hash(key: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in (await cluster_client.hgetall(key)).items()}

    states = await check_sales(b, out.decisions, sale_state, read_hash)
    assert len(out.assignment) == 2 and all(out.assignment), "both workers got partitions"
    check_ownership(out, b, states, PARTITIONS)

    # Every key of a sale sits on the node owning its hash tag's slot (a plain client there reads it,
    # no MOVED), and the cross-slot index sets were written key by key.
    for sale_id in b.sales:
        direct = node_client(cluster_client, rk.sale(sale_id))
        try:
            assert {k for k in _sale_keys(sale_id) if await direct.exists(k)} >= {
                rk.sale(sale_id), rk.sale_orders(sale_id), rk.sale_users(sale_id), rk.sale_applied(sale_id)}
        finally:
            await direct.aclose()
    assert {text(m) for m in await cluster_client.smembers(rk.sales_index())} == set(b.sales)
    assert {text(m) for m in await cluster_client.smembers(rk.active_sales())} == set(b.sales)
    for sale_id in b.sales:
        assert await cluster_client.smembers(rk.room_sales(f"room-{sale_id}")) == {sale_id.encode()}

    record(artifacts_dir, {"test": "cluster", "redis": "cluster-3", "workers": 2, **measurement(out, b)})
