"""Counters end to end: real Tansu, real redis-server, real worker processes, the read API."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumers import access, readmodel
from consumers.api import add_api_routes
from schemas import keys
from schemas.events import OrderPlaced, SaleOpened, ViewerJoined, make_event
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events, produce_raw, read_topic
from tests.harness.workers import WorkerHandle, start_worker
from tests.integration.test_counters_recount import (
    PARAMS,
    Harness,
    Scenario,
    assert_matches_reference,
    build_scenario,
    counter_state,
    reference,
    to_records,
    write_stock_orders,
)

pytestmark = pytest.mark.integration

WAIT_S = 120.0


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def hint(client: aioredis.Redis, key: str, field: str) -> int:
    return int(await client.hget(key, field) or 0)


@pytest.fixture
def counters_worker(worker_env: dict[str, str], topics: dict[str, str], tmp_path: Path) -> Any:
    """A worker running the counters agents only: the scripted stream brings its own decisions."""
    env = {**worker_env, "FLASHSALE_AGENTS": "counters",
           "FLASHSALE_STALE_VIEWER_S": str(PARAMS.stale_viewer_ms // 1000),
           "FLASHSALE_LATENESS_S": str(PARAMS.lateness_ms // 1000)}
    handle = start_worker(env, tmp_path)
    yield handle
    handle.process.stop()


async def test_scripted_stream_through_kafka_then_republish(broker: Broker, counters_worker: WorkerHandle,
                                                            topic_prefix: str, redis_client: aioredis.Redis) -> None:
    sc: Scenario = build_scenario(too_old=False)  # the dedupe horizon is the worker's (600 s default)
    await write_stock_orders(redis_client, sc)
    rooms, sales, _ = reference(sc)
    await produce_events(broker.bootstrap, topic_prefix, sc.events)

    async def applied() -> bool:
        for room_id, truth in rooms.items():
            base = keys.room_base(room_id)
            for name in ("events", "orders", "paid"):
                if await hint(redis_client, base, name) != truth.totals[name]:
                    return False
        for sale_id, s in sales.items():
            if await hint(redis_client, keys.sale_base(sale_id), "accepted") != s["accepted"]:
                return False
        return True

    await wait_until(applied, "the worker to apply the scripted stream")
    await assert_matches_reference(redis_client, sc)
    before = await counter_state(redis_client)

    # the whole stream published a second time: same event ids, new offsets
    await produce_events(broker.bootstrap, topic_prefix, sc.events)
    refused = {f"pay-{oid}" for oid in sc.refused}  # payments the stock core refuses never reach the room
    room_side = sum(1 for e in sc.events if e.type != "order.accepted" and e.event_id != "pay-again"
                    and e.event_id not in refused)
    sale_side = sum(1 for e in sc.events if e.type in ("order.placed", "order.paid", "order.accepted"))

    async def dropped() -> bool:
        n = sum([await hint(redis_client, keys.room_base(r), f) for r in rooms for f in ("dups", "too_old")])
        m = sum([await hint(redis_client, keys.sale_base(s), f) for s in sales for f in ("dups", "too_old")])
        return n == room_side + 1 and m == sale_side  # +1: the in-stream duplicate of the first pass

    await wait_until(dropped, "the republished stream to be recognised as duplicates")
    assert await counter_state(redis_client) == before

    names = TopicNames(topic_prefix)
    items = await read_topic(broker.bootstrap, names.alerts, lambda xs: len(xs) >= 2, timeout=30)
    assert len(items) >= 2
    items = await read_topic(broker.bootstrap, names.alerts, lambda xs: False, timeout=3)  # everything there is
    by_subject = Counter((a["data"]["scope"], a["data"]["subject_id"], a["data"]["metric"]) for a in items)
    assert by_subject[("room", "r1", "events")] == 1
    assert by_subject[("sale", "s1", "attempts")] == 1
    assert by_subject[("room", "r2", "events")] == 0
    assert len({a["event_id"] for a in items}) == len(items)


async def test_counters_with_the_stock_core(broker: Broker, worker_env: dict[str, str], topics: dict[str, str],
                                            tmp_path: Path, topic_prefix: str, redis_client: aioredis.Redis) -> None:
    """Both agents in one worker: the sale view joins the stock core's hash with the counters' rates,
    and accepted-order rates come from the stock core's own decisions."""
    worker = start_worker(worker_env, tmp_path)
    try:
        t0 = 1_700_000_100_000
        events = [make_event(SaleOpened(sale_id="s9", sku="k9", price=990, allotment=20, per_user_limit=1,
                                        starts_at=t0 - 1000, ends_at=t0 + 3_600_000), event_id="open-s9", ts=t0 - 1,
                             room_id="r9", user_id="host")]
        events += [make_event(ViewerJoined(), event_id=f"j{i}", ts=t0 + i, room_id="r9", user_id=f"u{i}",
                              channel="mini_program") for i in range(80)]
        events += [make_event(OrderPlaced(order_id=f"o{i}", sale_id="s9", sku="k9", qty=1, unit_price=990),
                              event_id=f"p{i}", ts=t0 + 1000 + i * 10, room_id="r9", user_id=f"u{i}",
                              channel="mini_program") for i in range(60)]
        # late attempts (sold out by then) move the sale's event time on, so the rush gets evaluated
        events += [make_event(OrderPlaced(order_id=f"late{i}", sale_id="s9", sku="k9", qty=1, unit_price=990),
                              event_id=f"pl{i}", ts=t0 + 2000 + i * 1000, room_id="r9", user_id=f"v{i}")
                   for i in range(5)]
        await produce_events(broker.bootstrap, topic_prefix, events)

        async def decided() -> bool:
            return await hint(redis_client, keys.sale_base("s9"), "accepted") == 20 and \
                await hint(redis_client, keys.sale_base("s9"), "attempts") == 65

        await wait_until(decided, "stock decisions to reach the counters")
        now = t0 + 7000
        view = await readmodel.sale_view(redis_client, "s9", now)
        assert view is not None
        assert (view["allotted"], view["available"], view["attempts"], view["accepted"]) == (20, 0, 65, 20)
        assert view["rejected"]["sold_out"] == 45
        assert view["accepted_per_s"]["60s"] == round(20 / 60, 3)
        assert view["attempts_per_s"]["10s"] == 6.5  # 60 in second t0+1, one in each of t0+2 .. t0+6
        assert view["sold_out_at"] is not None and view["seconds_to_sell_out"] is not None
        assert view["projected_sell_out_at"] is None
        snap = await readmodel.room_snapshot(redis_client, "r9", now)
        assert snap is not None and [s["sale_id"] for s in snap["sales"]] == ["s9"]
        funnel = await readmodel.room_funnel(redis_client, "r9", "mini_program", now)
        stages = {s["stage"]: s["users"] for s in funnel["stages"]}
        assert stages["viewers"] == 80 and stages["orderers"] == 60
        alerts = await read_topic(broker.bootstrap, TopicNames(topic_prefix).alerts, lambda xs: len(xs) >= 1,
                                  timeout=30)
        assert [(a["data"]["scope"], a["data"]["subject_id"]) for a in alerts] == [("sale", "s9")]
    finally:
        worker.process.stop()


async def test_bad_engagement_input_is_dead_lettered(broker: Broker, counters_worker: WorkerHandle,
                                                     topic_prefix: str, redis_client: aioredis.Redis) -> None:
    names = TopicNames(topic_prefix)
    good = make_event(ViewerJoined(), event_id="ok1", ts=1_700_000_000_000, room_id="rb", user_id="u1")
    misplaced = make_event(OrderPlaced(order_id="o1", sale_id="s", sku="k", qty=1, unit_price=1), event_id="x1",
                           ts=1_700_000_000_001, room_id="rb", user_id="u1")
    batch = orjson.dumps([good.to_dict(), {"type": "viewer.joined"}, misplaced.to_dict()])
    await produce_raw(broker.bootstrap, names.engagement, [(b"rb", b"{not json"), (b"rb", batch)])

    async def joined() -> bool:
        return await hint(redis_client, keys.room_base("rb"), "joins") == 1

    await wait_until(joined, "the good event of the mixed batch")
    dead = await read_topic(broker.bootstrap, names.dead_letter, lambda xs: len(xs) >= 3, timeout=30)
    assert sorted(d["reason"] for d in dead) == ["invalid_event", "malformed_json", "wrong_topic"]


async def test_read_api(redis_client: aioredis.Redis) -> None:
    sc = build_scenario()
    await write_stock_orders(redis_client, sc)
    await Harness(redis_client).feed(to_records(sc.events))
    signer = access.Signer(b"read-api-test-key-0123456789")
    app = web.Application(middlewares=[access.middleware(signer)])  # the API answers only with a token
    with warnings.catch_warnings():  # the agreed str key (see consumers.dashboard.server)
        warnings.simplefilter("ignore")
        app["redis"] = redis_client
    add_api_routes(app)
    async with TestClient(TestServer(app), headers={"Authorization": f"Bearer {signer.mint(None, 600)}"}) as client:
        resp = await client.get("/api/rooms")
        assert resp.status == 200
        assert {r["room_id"] for r in (await resp.json())["rooms"]} == {"r1", "r2"}
        resp = await client.get("/api/rooms/r1/snapshot")
        body = await resp.json()
        assert resp.status == 200 and body["room_id"] == "r1" and body["gmv"] == reference(sc)[0]["r1"].totals["gmv"]
        resp = await client.get("/api/rooms/r1/funnel", params={"channel": "share_link", "sku": "k1"})
        body = await resp.json()
        assert resp.status == 200 and body["channel"] == "share_link" and body["sku"] == "k1"
        assert [s["stage"] for s in body["stages"]] == ["viewers", "clickers", "carters", "orderers", "payers"]
        await redis_client.hset(keys.sale("s1"), mapping={"sale_id": "s1", "allotted": 40, "available": 3})
        resp = await client.get("/api/sales/s1")
        assert resp.status == 200 and (await resp.json())["available"] == 3
        for path in ("/api/rooms/nope/snapshot", "/api/rooms/nope/funnel", "/api/sales/nope"):
            resp = await client.get(path)
            assert resp.status == 404 and "error" in await resp.json()
        resp = await client.get("/api/rooms/r1/funnel", params={"channel": "tv"})
        assert resp.status == 400
        resp = await client.get("/api/rooms", params={"limit": "0"})
        assert resp.status == 400
