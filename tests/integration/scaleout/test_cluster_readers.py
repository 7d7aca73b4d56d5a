"""The readers on a 3-master Redis Cluster: the dashboard's read API and the HTTP gateway.

The counters and the stock are written the way the workers write them (the real Lua, through the
counters service and the stock store) into the cluster and, for comparison, into a single node;
the dashboard's /api answers must be the same on both, and the gateway must answer a sold-out sale
with 409 and read an order's status from the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from consumers.dashboard.server import SIGNER as DASHBOARD_SIGNER
from consumers.dashboard.server import create_app as create_dashboard
from consumers.dashboard.settings import DashboardSettings
from flashsale.embedded import free_port
from producers import simulator
from producers.gateway.app import create_app as create_gateway
from producers.gateway.app import make_runner
from producers.gateway.routes import STATE
from producers.gateway.settings import GatewaySettings
from producers.sdk import Publisher
from producers.settings import get_settings as get_publisher_settings
from producers.simulation.settings import get_settings as get_simulator_settings
from schemas import keys
from schemas.events import Event
from streams.metrics import WorkerMetrics
from streams.stock.logic import to_op
from streams.stock.store import StockStore
from tests.harness.broker import Broker
from tests.harness.redis_cluster import RedisClusterHandle
from tests.harness.redis_server import RedisServer
from tests.integration.stock.helpers import order, sale_opened
from tests.integration.test_counters_recount import SALES, Harness, Scenario, build_scenario, to_records

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-0123456789"


def op(event: Event) -> dict[str, Any]:
    out = to_op(event)
    assert out is not None
    return out


async def write_room_and_stock(client: Any, sc: Scenario) -> dict[str, list[dict[str, Any]]]:
    """What the workers write: the scenario's counters through the counters service and its Lua, and
    the scenario's sales opened and ordered from through the stock store and the stock script."""
    await Harness(client).feed(to_records(sc.events))
    now = sc.newest
    stock = StockStore(client, WorkerMetrics())
    batches: dict[str, list[dict[str, Any]]] = {}
    for sale_id, (room, sku, price, allotment, _) in SALES.items():
        ops = [op(sale_opened(sale_id=sale_id, sku=sku, allotment=allotment, price=price, room=room, ts=now,
                              starts=now - 60_000, ends=now + 3_600_000, event_id=f"stock-open-{sale_id}"))]
        ops += [op(order(f"stock-{sale_id}-o{i}", f"stock-u{i}", now, sale_id=sale_id, sku=sku, price=price,
                         room=room, qty=1 + i % 2)) for i in range(5)]
        batches[sale_id] = ops
    results = await stock.apply(batches, now)
    assert all(r.error is None for r in results.values()), results
    return {s: r.results or [] for s, r in results.items()}


@contextlib.asynccontextmanager
async def dashboard(settings: DashboardSettings) -> AsyncIterator[TestClient[Any, Any]]:
    """The dashboard's own app (its Redis client made from settings) on a test server."""
    app = create_dashboard(settings, CollectorRegistry())
    host_token = app[DASHBOARD_SIGNER].mint(None, 600)  # the room list and every room
    async with TestClient(TestServer(app), headers={"Authorization": f"Bearer {host_token}"}) as client:
        yield client


async def get_json(client: TestClient[Any, Any], path: str, **params: str) -> tuple[int, Any]:
    resp = await client.get(path, params=params)
    return resp.status, await resp.json()


async def first_snapshot(resp: aiohttp.ClientResponse, within_s: float = 10.0) -> dict[str, Any]:
    """The first ``snapshot`` event of an open text/event-stream response."""
    event = None
    async with asyncio.timeout(within_s):
        while True:
            raw = await resp.content.readline()
            assert raw, "stream ended"
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                return cast(dict[str, Any], orjson.loads(line[6:]))


API_PATHS: list[tuple[str, dict[str, str]]] = [
    ("/api/rooms", {}),
    ("/api/rooms/r1/snapshot", {}),
    ("/api/rooms/r2/snapshot", {}),
    ("/api/rooms/r1/funnel", {}),
    ("/api/rooms/r1/funnel", {"channel": "share_link"}),
    ("/api/rooms/r1/funnel", {"sku": "k1"}),
    ("/api/rooms/r1/funnel", {"channel": "live_room", "sku": "k1"}),
    ("/api/rooms/r2/funnel", {"channel": "community_group"}),
    ("/api/sales/s1", {}),
    ("/api/sales/s2", {}),
    ("/api/rooms/nope/snapshot", {}),
    ("/api/rooms/nope/funnel", {}),
    ("/api/sales/nope", {}),
]


async def test_dashboard_read_api_on_cluster_equals_single_node(
        redis_cluster: RedisClusterHandle, cluster_client: RedisCluster, redis_server: RedisServer,
        redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = build_scenario(too_old=False)
    on_cluster = await write_room_and_stock(cluster_client, sc)
    on_single = await write_room_and_stock(redis_client, sc)
    assert on_cluster == on_single, "the same stock decisions on both"
    # "now" is the stream's newest moment, so the rates and series windows hold the scenario's data
    monkeypatch.setattr("consumers.api._now_ms", lambda: sc.newest)

    async with dashboard(DashboardSettings(redis_url=redis_cluster.url, redis_cluster=True,
                                           push_interval_s=0.1)) as cl, \
            dashboard(DashboardSettings(redis_url=redis_server.url)) as single:
        status, body = await get_json(cl, "/readyz")
        assert (status, body["redis"]) == (200, "ok")
        for path, params in API_PATHS:
            got = await get_json(cl, path, **params)
            want = await get_json(single, path, **params)
            assert got == want, f"{path} {params}: cluster answer differs from the single node's"
            assert got[0] == (404 if "nope" in path else 200), (path, params, got)

        # ... and they show what was written: the counters' totals and the stock store's stock
        status, snap = await get_json(cl, "/api/rooms/r1/snapshot")
        assert status == 200 and snap["unique_viewers"] > 0 and snap["totals"]["joins"] > 0
        assert [s["sale_id"] for s in snap["sales"]] == ["s1"]
        status, funnel = await get_json(cl, "/api/rooms/r1/funnel")
        assert status == 200 and funnel["stages"][0]["users"] > 0 and funnel["windows"]["5m"] is not None
        for sale_id, (room, sku, price, allotment, _) in SALES.items():
            units = sum(r["q"] for r in on_cluster[sale_id] if r.get("out") == "accepted")
            assert units == 7
            status, view = await get_json(cl, f"/api/sales/{sale_id}")
            assert status == 200
            assert (view["room_id"], view["sku"], view["price"], view["allotted"], view["available"],
                    view["reserved"]) == (room, sku, price, allotment, allotment - units, units)

        # the live push reads the same snapshot and funnel from the cluster
        resp = await cl.get("/live/rooms/r1")
        assert resp.status == 200
        payload = await first_snapshot(resp)
        resp.close()
        live = payload["snapshot"]
        assert live is not None and payload["funnel"] is not None
        assert (live["room_id"], live["unique_viewers"], live["totals"]) == ("r1", snap["unique_viewers"],
                                                                              snap["totals"])
        assert payload["funnel"]["stages"] == funnel["stages"]


@contextlib.asynccontextmanager
async def gateway_on(broker: Broker, topic_prefix: str, redis_url: str, cluster: bool) -> AsyncIterator[
        tuple[str, aiohttp.ClientSession, Any]]:
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), redis_url=redis_url, redis_cluster=cluster,
                               broker_url=broker.url, topic_prefix=topic_prefix, timeout_ms=3000,
                               tokens=(TOKEN,), rate_limit=0.0, decision_timeout_ms=300,
                               auto_create_topics=False, partitions=4, soldout_cache_ms=10_000)
    app = create_gateway(settings, CollectorRegistry())
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=1).start()
        state = app[STATE]
        await asyncio.wait_for(state.connected.wait(), 15)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            yield f"http://{settings.host}:{settings.port}", session, state
    finally:
        await runner.cleanup()


async def test_gateway_on_cluster_sold_out_409_and_order_status(
        broker: Broker, topics: dict[str, str], topic_prefix: str, redis_cluster: RedisClusterHandle,
        cluster_client: RedisCluster) -> None:
    now = build_scenario().newest
    stock = StockStore(cast(Any, cluster_client), WorkerMetrics())
    res = await stock.apply({"g1": [
        op(sale_opened(sale_id="g1", sku="kg", allotment=2, limit=2, room="rg", ts=now, starts=now - 1000,
                       ends=now + 3_600_000)),
        op(order("g1-o1", "u1", now, sale_id="g1", sku="kg", qty=2, room="rg")),
        op(order("g1-o2", "u2", now, sale_id="g1", sku="kg", qty=1, room="rg")),
    ]}, now)
    assert res["g1"].error is None and [r.get("out") for r in res["g1"].results or []][1:] == ["accepted", "rejected"]
    assert await cluster_client.hget(keys.sale("g1"), "soldout") == b"1"

    async with gateway_on(broker, topic_prefix, redis_cluster.url, cluster=True) as (url, session, state):
        assert isinstance(state.redis, RedisCluster), "FLASHSALE_REDIS_CLUSTER gives a cluster client"
        body = {"order_id": "g1-o3", "user_id": "u3", "room_id": "rg", "sku": "kg", "qty": 1, "unit_price": 9900}
        async with session.post(f"{url}/v1/sales/g1/orders", json=body) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == "sold_out"
        async with session.get(f"{url}/v1/sales/g1/orders/g1-o1") as resp:
            assert resp.status == 200
            got = await resp.json()
            assert (got["outcome"], got["state"], got["qty"], got["reason"]) == ("accepted", "reserved", 2, None)
        async with session.get(f"{url}/v1/sales/g1/orders/g1-o2") as resp:
            assert resp.status == 200
            got = await resp.json()
            assert (got["outcome"], got["reason"]) == ("rejected", "sold_out")
        async with session.get(f"{url}/v1/sales/g1/orders/unknown") as resp:
            assert resp.status == 404 and (await resp.json())["status"] == "pending"
        async with session.get(f"{url}/readyz") as resp:
            assert resp.status == 200


async def sale_off_the_seed_node(client: RedisCluster, seed_port: int) -> str:
    """A sale id whose keys live on another primary than the URL's node: a plain (non-cluster)
    client on that URL gets MOVED for them."""
    await client.initialize()
    for n in range(1000):
        node = client.get_node_from_key(keys.sale(f"sdk{n}"))
        if node is not None and int(node.port) != seed_port:
            return f"sdk{n}"
    raise AssertionError("no sale id off the seed node")


async def test_sdk_place_order_reads_a_decision_from_the_cluster(
        broker: Broker, topics: dict[str, str], topic_prefix: str, redis_cluster: RedisClusterHandle,
        cluster_client: RedisCluster) -> None:
    """An order decided before the SDK listened (a retry after a lost answer) is found in Redis: with
    FLASHSALE_REDIS_CLUSTER the SDK reads it with a cluster client, wherever its slot lives."""
    sale_id = await sale_off_the_seed_node(cluster_client, redis_cluster.ports[0])
    now = build_scenario().newest
    res = await StockStore(cast(Any, cluster_client), WorkerMetrics()).apply({sale_id: [
        op(sale_opened(sale_id=sale_id, sku="ks", room="rs", ts=now, starts=now - 1000, ends=now + 3_600_000)),
        op(order("sdk-o1", "u1", now, sale_id=sale_id, sku="ks", qty=2, room="rs")),
    ]}, now)
    assert [r.get("out") for r in res[sale_id].results or []][1:] == ["accepted"]

    settings = get_publisher_settings({"FLASHSALE_BROKER_URL": broker.url, "FLASHSALE_TOPIC_PREFIX": topic_prefix,
                                       "FLASHSALE_REDIS_URL": redis_cluster.url, "FLASHSALE_REDIS_CLUSTER": "true",
                                       "FLASHSALE_PRODUCER_TIMEOUT_MS": "3000"})
    assert settings.redis_cluster
    async with Publisher.from_settings(settings) as sdk:
        decision = await sdk.place_order(sale_id=sale_id, sku="ks", user_id="u1", room_id="rs", qty=2,
                                         unit_price=9900, order_id="sdk-o1", timeout=5.0)
    assert (decision.outcome, decision.state, decision.qty, decision.order_id) == ("accepted", "reserved", 2, "sdk-o1")


def test_simulator_takes_the_cluster_flag_from_the_environment() -> None:
    env = {"FLASHSALE_REDIS_URL": "redis://127.0.0.1:7000/0", "FLASHSALE_REDIS_CLUSTER": "true"}
    args = simulator.parse([], get_simulator_settings(env))
    assert (args.redis, args.redis_cluster) == ("redis://127.0.0.1:7000/0", True)
    assert simulator.parse([], get_simulator_settings({})).redis_cluster is False
