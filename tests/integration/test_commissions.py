"""Refunds and distributor commissions end to end (issue 16): a real broker, redis-server and worker (stock
core and counters): payments accrue commission once, refunds claw it back and make GMV net, a replay of the
whole orders log changes no ledger entry or counter, the audit recomputes the ledger from the log, and
the read API shows a distributor its own ledger only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consumers.access import Signer
from consumers.dashboard.server import create_app
from consumers.dashboard.settings import DashboardSettings
from flashsale.audit import audit
from schemas import keys
from schemas.events import Event, OrderPaid, OrderPlaced, OrderRefunded, SaleOpened, make_event
from schemas.order_record import commission, parse_distributor_totals, parse_ledger_entry
from schemas.topics import TopicNames
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events, produce_raw, read_topic
from tests.harness.redis_server import RedisServer
from tests.harness.workers import start_worker

pytestmark = pytest.mark.integration

WAIT_S = 120.0
ROOM, SALE, SKU, PRICE, BPS = "rc", "c1", "k-c1", 1999, 350
KEY = "commission-test-key-0123456789abcdef"
SIGNER = Signer(KEY.encode())


def ev(payload: Any, eid: str, ts: int, user: str, channel: str = "share_link", ref: str | None = None) -> Event:
    return make_event(payload, event_id=eid, ts=ts, room_id=ROOM, user_id=user, channel=channel, referrer_id=ref)


def place(oid: str, user: str, qty: int, ts: int, ref: str | None, channel: str = "share_link") -> Event:
    return ev(OrderPlaced(order_id=oid, sale_id=SALE, sku=SKU, qty=qty, unit_price=PRICE), f"place-{oid}", ts, user,
              channel, ref)


def pay(oid: str, user: str, ts: int, ref: str | None = None) -> Event:
    return ev(OrderPaid(order_id=oid, sale_id=SALE, sku=SKU), f"pay-{oid}", ts, user, "share_link", ref)


def refund(oid: str, user: str, ts: int, eid: str = "", restock: bool = False, ref: str | None = None) -> Event:
    return ev(OrderRefunded(order_id=oid, sale_id=SALE, sku=SKU, restock=restock), eid or f"refund-{oid}", ts, user,
              "share_link", ref)


async def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


async def hash_of(client: aioredis.Redis, key: str) -> dict[str, str]:
    return {text(k): text(v) for k, v in (await client.hgetall(key)).items()}


async def state(client: aioredis.Redis) -> dict[str, Any]:
    """Everything a replay must leave unchanged: stock, orders, ledger, totals, and the net counters."""
    room = await hash_of(client, keys.room_base(ROOM))
    sale_cnt = await hash_of(client, keys.sale_base(SALE))
    return {
        "sale": await hash_of(client, keys.sale(SALE)),
        "orders": await hash_of(client, keys.sale_orders(SALE)),
        "ledger": await hash_of(client, keys.sale_ledger(SALE)),
        "dist": await hash_of(client, keys.sale_distributors(SALE)),
        "room": {k: room.get(k) for k in ("orders", "paid", "gmv", "refunds", "refunded_gmv")},
        "sale_cnt": {k: sale_cnt.get(k) for k in ("paid", "gmv", "refunds", "refunded_gmv", "refunds_refused")},
        "funnel": await hash_of(client, keys.room_funnel(ROOM)),
        "ref_gmv": [(text(m), s) for m, s in await client.zrange(keys.room_ref_gmv(ROOM), 0, -1, withscores=True)],
    }


@pytest.fixture
async def api(redis_server: RedisServer) -> AsyncIterator[TestClient[Any, Any]]:
    settings = DashboardSettings(redis_url=redis_server.url, push_interval_s=0.1, idle_room_grace_s=0.0, key=KEY)
    async with TestClient(TestServer(create_app(settings, registry=CollectorRegistry()), host="127.0.0.1")) as c:
        yield c


async def test_commissions_and_refunds_through_the_pipeline(broker: Broker, worker_env: dict[str, str],
                                                            topics: dict[str, str], tmp_path: Path, topic_prefix: str,
                                                            redis_client: aioredis.Redis, redis_server: RedisServer,
                                                            api: TestClient[Any, Any]) -> None:
    names = TopicNames(topic_prefix)
    t0 = int(time.time() * 1000)  # the sweeper runs on the wall clock: reservations held for 10 minutes
    opened = ev(SaleOpened(sale_id=SALE, sku=SKU, price=PRICE, allotment=10, per_user_limit=3, starts_at=t0 - 1000,
                           ends_at=t0 + 3_600_000, reservation_ttl_s=600, commission_bps=BPS),
                f"open-{SALE}", t0 - 1, "host", "other")
    orders = [place("a1", "u1", 2, t0 + 10, "kol-a"), place("a2", "u2", 1, t0 + 20, "kol-a"),
              place("b1", "u3", 3, t0 + 30, "kol-b"), place("n1", "u4", 1, t0 + 40, "kol-b", channel="live_room"),
              place("n2", "u5", 1, t0 + 50, None)]
    worker = start_worker(worker_env, tmp_path)
    try:
        await produce_events(broker.bootstrap, topic_prefix, [opened, *orders])
        # the payments (each with its order's referrer, as the payment service sends them) and the refunds
        money = [pay("a1", "u1", t0 + 1000, "kol-a"), pay("a2", "u2", t0 + 1010, "kol-a"),
                 pay("b1", "u3", t0 + 1020, "kol-b"), pay("n1", "u4", t0 + 1030), pay("n2", "u5", t0 + 1040),
                 pay("a1", "u1", t0 + 1050, "kol-a"),  # a redelivered payment
                 refund("a1", "u1", t0 + 2000, ref="kol-a"),  # goods kept by the buyer
                 refund("b1", "u3", t0 + 2010, restock=True, ref="kol-b"),  # goods back on sale
                 refund("a1", "u1", t0 + 2020, eid="refund-a1-again", ref="kol-a"),  # already refunded
                 refund("zz", "u1", t0 + 2030),  # unknown order
                 refund("a2", "u9", t0 + 2040, eid="refund-a2-thief")]  # another user's order
        await produce_events(broker.bootstrap, topic_prefix, money)
        refusals = {"refund-a1-again": "already_refunded", "refund-zz": "unknown_order",
                    "refund-a2-thief": "not_owner"}

        async def settled() -> bool:
            cnt = await hash_of(redis_client, keys.sale_base(SALE))
            # five payment events (the redelivery is a dup) and five refund events
            return int(cnt.get("refund_events", 0)) == 5 and int(cnt.get("paid_events", 0)) == 5

        await wait_for(settled, "payments and refunds decided and counted")
        letters = await read_topic(broker.bootstrap, names.dead_letter, lambda xs: len(xs) >= 3, timeout=60)
        assert {orjson.loads(d["raw"])["event_id"]: d["reason"] for d in letters} == refusals

        sale = await hash_of(redis_client, keys.sale(SALE))
        n = {k: int(sale.get(k, 0)) for k in ("allotted", "available", "reserved", "sold", "refunded", "restocked",
                                              "paid", "gmv", "refunds", "refunded_gmv")}
        assert n["allotted"] == n["available"] + n["reserved"] + n["sold"] + n["refunded"] == 10
        assert (n["sold"], n["refunded"], n["restocked"], n["available"]) == (3, 2, 3, 5)
        assert (n["paid"], n["gmv"], n["refunds"], n["refunded_gmv"]) == (3, 3 * PRICE, 2, 5 * PRICE)

        # counters are net of refunds and agree with the stock core
        room = await hash_of(redis_client, keys.room_base(ROOM))
        assert (int(room["gmv"]), int(room["paid"]), int(room["refunds"])) == (3 * PRICE, 3, 2)
        funnel = await hash_of(redis_client, keys.room_funnel(ROOM))
        assert (int(funnel["g:*:*"]), int(funnel["p:*:*"])) == (3 * PRICE, 3)
        assert await redis_client.zscore(keys.room_ref_gmv(ROOM), "kol-a") == PRICE  # 3 x price paid, 2 refunded
        assert await redis_client.zscore(keys.room_ref_gmv(ROOM), "kol-b") == 0

        # the ledger: share_link orders with a referrer only; commission = floor(amount x bps / 10000)
        ledger = {text(k): parse_ledger_entry(v)
                  for k, v in (await redis_client.hgetall(keys.sale_ledger(SALE))).items()}
        assert set(ledger) == {"a1", "a2", "b1"}
        assert ledger["a1"].commission == commission(2 * PRICE, BPS) == 139  # floor(3998 * 0.035) = floor(139.93)
        assert (ledger["a1"].clawed_back, ledger["a2"].clawed_back, ledger["b1"].clawed_back) == (139, 0, 209)
        dist = {text(k): parse_distributor_totals(v)
                for k, v in (await redis_client.hgetall(keys.sale_distributors(SALE))).items()}
        a, b = dist["kol-a"], dist["kol-b"]
        assert (a.orders, a.paid_gmv, a.earned, a.refunds, a.clawed_back, a.net) == (2, 3 * PRICE, 139 + 69, 1, 139, 69)
        assert (b.orders, b.earned, b.clawed_back, b.net) == (1, 209, 209, 0)

        # a replay of the whole orders log changes nothing, and re-refuses the same refunds
        before = await state(redis_client)
        msgs = await read_topic(broker.bootstrap, names.orders, lambda xs: False, timeout=5, raw=True)
        msgs.sort(key=lambda m: (m.partition, m.offset))
        await produce_raw(broker.bootstrap, names.orders, [(m.key, m.value) for m in msgs])
        sale_ops = len(orders) + len(money)  # every order.placed/paid/refunded is a counters' sale op

        async def replayed() -> bool:
            cnt = await hash_of(redis_client, keys.sale_base(SALE))
            return int(cnt.get("dups", 0)) >= sale_ops + 1  # + the redelivered payment

        await wait_for(replayed, "the counters to see the replay")
        letters = await read_topic(broker.bootstrap, names.dead_letter, lambda xs: len(xs) >= 6, timeout=60)
        assert sorted(d["reason"] for d in letters) == sorted(list(refusals.values()) * 2)
        await asyncio.sleep(1.0)  # a wrong late effect gets the chance to show
        assert await state(redis_client) == before

        # the audit recomputes stock and ledger from the log; a tampered entry is caught
        results = await audit(broker.bootstrap, redis_server.url, topic_prefix)
        assert [r.problems for r in results] == [[]]
        raw = orjson.loads(await redis_client.hget(keys.sale_ledger(SALE), "a2"))
        await redis_client.hset(keys.sale_ledger(SALE), "a2", orjson.dumps({**raw, "c": raw["c"] + 1}))
        results = await audit(broker.bootstrap, redis_server.url, topic_prefix)
        assert any(p.startswith("ledger: 1 entries differ") for p in results[0].problems), results[0].problems
        assert any(p.startswith("ledger: totals of 1 distributors") for p in results[0].problems)
        await redis_client.hset(keys.sale_ledger(SALE), "a2", orjson.dumps(raw))
    finally:
        worker.process.stop()

    # the read API: a distributor sees its own ledger only; the room's token and the host see all
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    kol_a = bearer(SIGNER.mint(ROOM, 3600, distributor_id="kol-a"))
    resp = await api.get(f"/api/rooms/{ROOM}/distributors/kol-a/ledger", headers=kol_a)
    assert resp.status == 200
    body = await resp.json()
    assert (body["commission_earned"], body["commission_clawed_back"], body["commission_net"]) == (208, 139, 69)
    assert (body["orders"], body["paid_gmv"], body["refunded_gmv"], body["net_gmv"]) == (2, 3 * PRICE, 2 * PRICE,
                                                                                          PRICE)
    assert sorted(e["order_id"] for e in body["entries"]) == ["a1", "a2"]
    for path in (f"/api/rooms/{ROOM}/distributors/kol-b/ledger", "/api/rooms/other/distributors/kol-a/ledger",
                 f"/api/rooms/{ROOM}/distributors", f"/api/rooms/{ROOM}/snapshot", f"/api/sales/{SALE}",
                 f"/api/rooms/{ROOM}/funnel", "/api/rooms"):
        resp = await api.get(path, headers=kol_a)
        assert resp.status == 403, path
    who = await (await api.get("/api/access", headers=kol_a)).json()
    assert (who["room_id"], who["distributor_id"], who["all_rooms"]) == (ROOM, "kol-a", False)

    other_room = bearer(SIGNER.mint("other", 3600))
    assert (await api.get(f"/api/rooms/{ROOM}/distributors/kol-a/ledger", headers=other_room)).status == 403
    for token in (SIGNER.mint(ROOM, 3600), SIGNER.mint(None, 3600)):
        resp = await api.get(f"/api/rooms/{ROOM}/distributors", headers=bearer(token))
        assert resp.status == 200
        rows = {r["distributor_id"]: r for r in (await resp.json())["distributors"]}
        assert (rows["kol-a"]["commission_net"], rows["kol-b"]["commission_net"]) == (69, 0)
        resp = await api.get(f"/api/rooms/{ROOM}/distributors/kol-b/ledger", headers=bearer(token))
        assert (await resp.json())["commission_clawed_back"] == 209
    snap = await (await api.get(f"/api/rooms/{ROOM}/snapshot", headers=bearer(SIGNER.mint(ROOM, 3600)))).json()
    board = {r["referrer_id"]: r for r in snap["leaderboard"]}
    assert (board["kol-a"]["gmv"], board["kol-a"]["commission"]) == (PRICE, 69)
    sale_view = next(s for s in snap["sales"] if s["sale_id"] == SALE)
    assert (sale_view["gmv"], sale_view["refunds"], sale_view["refunded"], sale_view["commission_bps"]) == (
        3 * PRICE, 2, 2, BPS)
