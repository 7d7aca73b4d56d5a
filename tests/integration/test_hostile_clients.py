"""Hostile clients during a burst (issue 12, "Tests"): a real broker, Redis and worker (signing its
outputs), the gateway in-process with a token per scope, and while honest buyers storm a small sale:
tokens trying everything outside their scopes, clients posting pipeline outputs, a forger writing
unsigned decisions straight to the order-decisions topic, skewed client clocks, reused order ids and
a flood of invalid requests. Afterwards: nothing oversold, the stock invariant holds, every honest
order has its own correct decision (the one in Redis), and every refusal was counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from flashsale.embedded import free_port
from kernel.signing import OutputKeys
from producers.decisions import read_decision
from producers.gateway.app import create_app, make_runner
from producers.gateway.routes import STATE
from producers.gateway.settings import GatewaySettings
from producers.gateway.state import GatewayState
from producers.sdk import order_event_id
from schemas import keys
from schemas.codec import decode_record
from schemas.order_record import OrderRecord, parse_order_record
from schemas.topics import ALERTS, DECISIONS, ENGAGEMENT, ORDERS
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.redis_server import RedisServer
from tests.harness.workers import scrape, start_worker, total

pytestmark = pytest.mark.integration

KEY = "k" * 40  # the workers' output signing key (the gateway verifies with it)
WRONG_KEY = "w" * 40
BUYER = "buyer-token-0123456789"  # the order service: engagement+orders
FLOODER = "flooder-token-0123456789"  # a plain token (engagement+orders), its own rate-limit bucket
PAYMENTS = "payments-token-0123456789"
CONTROL = "control-token-0123456789"
TOKENS = (f"{BUYER}=engagement+orders", FLOODER, f"{PAYMENTS}=payments", f"{CONTROL}=control")
RATE, BURST = 1.0, 1000  # per token: the buyers' ~400 requests fit the burst; a flood does not

SALE, SKU, ROOM, PRICE = "main", "sku-1", "room-1", 990
ALLOTMENT, LIMIT = 50, 2
USERS = 300  # honest users with one order each
GREEDY, GREEDY_ORDERS = 10, 3  # honest users who try past the per-user limit
CLOCK, CLOCK_SKU, CLOCK_TTL_S = "clock", "sku-2", 60  # the sale the skewed clocks order from
THIEVES = 12
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Gw:
    url: str
    state: GatewayState
    registry: CollectorRegistry
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any = None, *, token: str, data: bytes | None = None
                   ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        payload = data if data is not None else orjson.dumps(body)
        async with self.session.post(self.url + path, data=payload, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    async def get(self, path: str, *, token: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path, headers={"Authorization": f"Bearer {token}"}) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def samples(self, name: str, label: str) -> dict[str, float]:
        return {s.labels[label]: s.value for m in self.registry.collect() for s in m.samples
                if s.name == name and s.value}


@contextlib.asynccontextmanager
async def running_gateway(broker: Broker, redis_server: RedisServer, topic_prefix: str) -> AsyncIterator[Gw]:
    options: dict[str, Any] = {"tokens": TOKENS, "rate_limit": RATE, "rate_burst": BURST, "output_signing_key": KEY,
                               "decision_timeout_ms": 20_000, "soldout_cache_ms": 50, "auto_create_topics": False,
                               "partitions": 4}
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), redis_url=redis_server.url, broker_url=broker.url,
                               topic_prefix=topic_prefix, timeout_ms=3000, **options)
    registry = CollectorRegistry()
    app = create_app(settings, registry)
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=1).start()
        state = app[STATE]
        await asyncio.wait_for(state.connected.wait(), 15)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500)) as session:
            yield Gw(f"http://{settings.host}:{settings.port}", state, registry, session)
    finally:
        await runner.cleanup()


@dataclass
class Ledger:
    """What the gateway must have counted: rejected_total by reason, and events refused for their type."""

    refused: Counter[str] = field(default_factory=Counter)
    forbidden_items: int = 0

    def forbidden(self, status: int, body: Any, reason: str, items: int = 0) -> None:
        assert status == 403, (status, body)
        assert body["error"] == ("forbidden_event_type" if items else "forbidden"), body
        if items:
            assert len(body["errors"]) == items, body
        self.refused[reason] += 1
        self.forbidden_items += items


def envelope(type_: str, event_id: str, data: dict[str, Any], *, user: str = "u-x", ts: int | None = None,
             room: str = ROOM) -> dict[str, Any]:
    return {"type": type_, "v": 1, "event_id": event_id, "ts": now_ms() if ts is None else ts, "room_id": room,
            "user_id": user, "channel": "live_room", "data": data}


def order_body(order_id: str, user: str, **kw: Any) -> dict[str, Any]:
    return {"order_id": order_id, "user_id": user, "room_id": ROOM, "sku": SKU, "qty": 1, "unit_price": PRICE,
            **kw}


def open_body(now: int, **kw: Any) -> dict[str, Any]:
    return {"room_id": ROOM, "sku": SKU, "price": PRICE, "allotment": ALLOTMENT, "per_user_limit": LIMIT,
            "starts_at": now - 1000, "ends_at": now + 600_000, "reservation_ttl_s": 600, **kw}


def forged_accept(order_id: str, user: str, now: int) -> dict[str, Any]:
    """What a worker would write for an accepted order, with the worker's own event id: no signature."""
    return envelope("order.accepted", f"dec:{SALE}:{order_id}", user=user, ts=now, data={
        "order_id": order_id, "sale_id": SALE, "sku": SKU, "qty": 1, "unit_price": PRICE,
        "reserved_until": now + 3_600_000})  # a generous deadline no worker gave


async def forge(bootstrap: str, topic: str, orders: list[tuple[str, str]], now: int) -> int:
    """Write forged order.accepted records straight to the decisions topic (keyed like the worker's, so
    in the partition of the real decisions): one unsigned record per order, one batch signed with a
    wrong key, one signed with the right key for another topic (an alert's signature). Returns records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, orjson.dumps(forged_accept(o, u, now)), key=SKU.encode())
                for o, u in orders]
        wrong, right = OutputKeys.parse(WRONG_KEY), OutputKeys.parse(KEY)
        assert wrong is not None and right is not None
        batch = orjson.dumps([forged_accept(o, u, now) for o, u in orders[:30]])
        futs.append(await producer.send(topic, batch, key=SKU.encode(), headers=[wrong.header(DECISIONS, batch)]))
        one = orjson.dumps(forged_accept(*orders[0], now))
        futs.append(await producer.send(topic, one, key=SKU.encode(), headers=[right.header(ALERTS, one)]))
        await asyncio.gather(*futs)
        return len(futs)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum((await consumer.end_offsets([TopicPartition(topic, p) for p in parts])).values())
    finally:
        await consumer.stop()


async def order_record(redis: aioredis.Redis, sale_id: str, order_id: str) -> OrderRecord:
    raw = await redis.hget(keys.sale_orders(sale_id), order_id)
    assert raw is not None, (sale_id, order_id)
    return parse_order_record(raw)


async def sale_hash(redis: aioredis.Redis, sale_id: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.sale(sale_id))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_hostile_clients_during_a_burst_change_no_honest_answer_and_every_refusal_is_counted(
        broker: Broker, redis_server: RedisServer, worker_env: dict[str, str], topics: dict[str, str],
        topic_prefix: str, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    worker = start_worker({**worker_env, "FLASHSALE_OUTPUT_SIGNING_KEY": KEY}, tmp_path)
    try:
        async with running_gateway(broker, redis_server, topic_prefix) as gw:
            await _scenario(gw, broker, topics, redis_client, worker.port)
    finally:
        worker.process.stop()


async def _scenario(gw: Gw, broker: Broker, topics: dict[str, str], redis: aioredis.Redis,
                    worker_port: int) -> None:
    ledger = Ledger()
    now = now_ms()

    # --- the merchant opens the sale, and a second one the skewed clocks order from ----------------------
    status, opened = await gw.post(f"/v1/sales/{SALE}/open", open_body(now), token=CONTROL)
    assert status == 200 and opened["status"] == "applied", opened
    status, clock_opened = await gw.post(f"/v1/sales/{CLOCK}/open", open_body(
        now, sku=CLOCK_SKU, allotment=10, per_user_limit=1, reservation_ttl_s=CLOCK_TTL_S), token=CONTROL)
    assert status == 200 and clock_opened["status"] == "applied", clock_opened
    clock_ends_at = now + 600_000

    honest: list[tuple[str, str]] = [(f"o-u{i}", f"u{i}") for i in range(USERS)]
    for g in range(GREEDY):  # interleaved with the others
        for k in range(GREEDY_ORDERS):
            honest.insert((g * 29 + k * 7) % len(honest), (f"o-g{g}-{k}", f"g{g}"))
    owner = dict(honest)

    # The forger writes an unsigned acceptance for every honest order before any is placed: without the
    # signature check each would answer its order first (and the counters would count them).
    forged = await forge(broker.bootstrap, topics[DECISIONS], honest, now)

    answers: dict[str, tuple[int, Any]] = {}
    decided: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def place(order_id: str, user: str) -> None:
        for _ in range(1000):  # bounded; an honest client retries what it is told to retry (admission control)
            status, body = await gw.post(f"/v1/sales/{SALE}/orders", order_body(order_id, user), token=BUYER)
            if status != 429 or body.get("error") != "units_in_flight":
                break
            assert body["order_id"] == order_id and body["outcome"] == "retry", body
            ledger.refused["units_in_flight"] += 1
            await asyncio.sleep(0.05)
        answers[order_id] = (status, body)
        if status == 200:
            decided.put_nowait((order_id, user))

    async def burst() -> None:
        await asyncio.gather(*(place(o, u) for o, u in honest))

    async def forger_again() -> None:  # and again while the burst runs
        nonlocal forged
        forged += await forge(broker.bootstrap, topics[DECISIONS], honest, now)

    async def buyer_tries_control_and_payments() -> None:
        evil_open = envelope("sale.opened", "evil-open", user="host", data={
            "sale_id": SALE, "sku": SKU, "price": 1, "allotment": 10**8, "per_user_limit": 10_000,
            "starts_at": now - 1000, "ends_at": now + DAY_MS, "reservation_ttl_s": 86_400})
        evil_stock = envelope("stock.adjusted", "evil-stock", data={"sale_id": SALE, "sku": SKU, "delta": 10**8})
        evil_paid = [envelope("order.paid", f"evil-paid-{i}", user=u, data={"order_id": o, "sale_id": SALE,
                                                                            "sku": SKU})
                     for i, (o, u) in enumerate(honest[:5])]
        like = envelope("viewer.liked", "evil-like", data={"count": 1})
        for batch, n in (([evil_open], 1), ([evil_stock], 1), (evil_paid, 5),
                         ([like, evil_open, evil_stock, *evil_paid], 7)):
            ledger.forbidden(*await gw.post("/v1/events", batch, token=BUYER), "missing_scope", n)
        for path, body in ((f"/v1/sales/{SALE}/open", open_body(now, price=1, allotment=10**8)),
                           (f"/v1/sales/{SALE}/stock", {"delta": 10**8, "request_id": "evil"}),
                           (f"/v1/sales/{SALE}/close", {}),
                           (f"/v1/sales/{SALE}/orders/{honest[0][0]}/pay", {"user_id": honest[0][1]})):
            ledger.forbidden(*await gw.post(path, body, token=BUYER), "missing_scope")

    async def other_scopes_try_the_rest() -> None:
        placed = envelope("order.placed", "evil-placed", user="evil-u", data={
            "order_id": "evil-o", "sale_id": CLOCK, "sku": CLOCK_SKU, "qty": 1, "unit_price": PRICE})
        paid = envelope("order.paid", "evil-paid-c", user=honest[1][1], data={
            "order_id": honest[1][0], "sale_id": SALE, "sku": SKU})
        opener = envelope("sale.opened", "evil-open-p", data={
            "sale_id": SALE, "sku": SKU, "price": 1, "allotment": 10**8, "per_user_limit": 10_000,
            "starts_at": now - 1000, "ends_at": now + DAY_MS})
        like = envelope("viewer.liked", "evil-like-p", data={"count": 1})
        for path, body in ((f"/v1/sales/{SALE}/open", open_body(now, price=1)),
                           (f"/v1/sales/{SALE}/stock", {"delta": 10**8, "request_id": "evil-p"}),
                           (f"/v1/sales/{SALE}/close", {}),
                           (f"/v1/sales/{SALE}/orders", order_body("evil-p", "evil-u"))):
            ledger.forbidden(*await gw.post(path, body, token=PAYMENTS), "missing_scope")
        for batch in ([opener], [like], [placed]):
            ledger.forbidden(*await gw.post("/v1/events", batch, token=PAYMENTS), "missing_scope", 1)
        for path, body in ((f"/v1/sales/{SALE}/orders/{honest[1][0]}/pay", {}),
                           (f"/v1/sales/{SALE}/orders/{honest[1][0]}/cancel", {"user_id": honest[1][1]}),
                           (f"/v1/sales/{SALE}/orders", order_body("evil-c", "evil-u"))):
            ledger.forbidden(*await gw.post(path, body, token=CONTROL), "missing_scope")
        ledger.forbidden(*await gw.get(f"/v1/sales/{SALE}/orders/{honest[1][0]}", token=CONTROL), "missing_scope")
        for batch in ([paid], [placed]):
            ledger.forbidden(*await gw.post("/v1/events", batch, token=CONTROL), "missing_scope", 1)

    async def everyone_posts_outputs() -> None:
        outputs = [forged_accept(o, u, now) | {"event_id": f"evil-out-{o}"} for o, u in honest[:3]]
        outputs.append(envelope("sale.sold_out", "evil-out-soldout", data={
            "sale_id": SALE, "sku": SKU, "sold_out_at": now, "opened_at": now, "allotted": ALLOTMENT}))
        for token in (BUYER, PAYMENTS, CONTROL):
            ledger.forbidden(*await gw.post("/v1/events", outputs, token=token), "output_type", 4)
        placed = envelope("order.placed", "evil-placed-2", user="evil-u", data={
            "order_id": "evil-o2", "sale_id": CLOCK, "sku": CLOCK_SKU, "qty": 1, "unit_price": PRICE})
        ledger.forbidden(*await gw.post("/v1/events", [placed, outputs[0]], token=BUYER), "output_type", 1)

    skewed: dict[str, tuple[str, int, int]] = {}  # order id → (user, published no earlier, no later than)

    async def skewed_clocks() -> None:
        stamps = {"clk-future": now + DAY_MS, "clk-past": now - DAY_MS, "clk-end": clock_ends_at - 1}
        for i, (order_id, ts) in enumerate(stamps.items()):
            user = f"clk-user-{i}"
            placed = envelope("order.placed", f"clk-ev-{i}", user=user, ts=ts, data={
                "order_id": order_id, "sale_id": CLOCK, "sku": CLOCK_SKU, "qty": 1, "unit_price": PRICE})
            before = now_ms()
            status, body = await gw.post("/v1/events", placed, token=BUYER)
            assert (status, body) == (202, {"accepted": 1, "records": 1})
            skewed[order_id] = (user, before, now_ms())
        seconds = envelope("order.placed", "clk-ev-s", user="clk-user-s", ts=now // 1000, data={
            "order_id": "clk-seconds", "sale_id": CLOCK, "sku": CLOCK_SKU, "qty": 1, "unit_price": PRICE})
        status, body = await gw.post("/v1/events", seconds, token=BUYER)
        assert status == 400 and body["error"] == "invalid_events", body
        assert body["errors"][0]["field"] == "ts" and "seconds" in body["errors"][0]["message"], body
        ledger.refused["invalid_event"] += 1

    thefts: list[tuple[str, str, str]] = []  # (order id, owner, thief)

    async def thief(i: int) -> None:
        order_id, victim = await asyncio.wait_for(decided.get(), 30)  # an order its owner already placed
        name = f"thief-{i}"
        thefts.append((order_id, victim, name))
        status, body = await gw.post(f"/v1/sales/{SALE}/orders", order_body(order_id, name), token=BUYER)
        assert status == 200 and (body["outcome"], body["reason"]) == ("rejected", "order_id_taken"), body
        placed = envelope("order.placed", f"thief-place-{i}", user=name, data={
            "order_id": order_id, "sale_id": SALE, "sku": SKU, "qty": 1, "unit_price": PRICE})
        assert (await gw.post("/v1/events", placed, token=BUYER))[0] == 202  # its own attempt: decided taken
        status, body = await gw.post(f"/v1/sales/{SALE}/orders/{order_id}/cancel", {"user_id": name}, token=BUYER)
        assert status == 409 and (body["error"], body["reason"], body["state"]) == (
            "cancellation_refused", "not_owner", None), body
        ledger.refused["not_owner"] += 1
        status, body = await gw.post(f"/v1/sales/{SALE}/orders/{order_id}/pay", {"user_id": name}, token=PAYMENTS)
        assert status == 409 and (body["error"], body["reason"]) == ("payment_refused", "not_owner"), body
        ledger.refused["not_owner"] += 1
        cancel = envelope("order.cancelled", f"thief-cancel-{i}", user=name, data={
            "order_id": order_id, "sale_id": SALE, "sku": SKU})
        assert (await gw.post("/v1/events", cancel, token=BUYER))[0] == 202  # the worker dead-letters it

    flood_answers: list[tuple[str, int, Any]] = []

    async def flood() -> None:
        async def send(kind: str, path: str, body: Any = None, data: bytes | None = None) -> None:
            status, answer = await gw.post(path, body, data=data, token=FLOODER)
            flood_answers.append((kind, status, answer))

        def bad_batch(j: int) -> list[dict[str, Any]]:
            return [envelope("viewer.liked", f"flood-{j}-{i}", data={"count": True}) for i in range(100)]

        await asyncio.gather(
            *(send("batch", "/v1/events", bad_batch(j)) for j in range(15)),
            *(send("json", "/v1/events", data=b'{"type": "viewer.liked", ') for _ in range(20)),
            *(send("order", f"/v1/sales/{SALE}/orders", order_body(f"flood-o{j}", "flood-u", qty=0))
              for j in range(20)))

    flood_started = time.monotonic()
    await asyncio.gather(burst(), forger_again(), buyer_tries_control_and_payments(), other_scopes_try_the_rest(),
                         everyone_posts_outputs(), skewed_clocks(), flood(), *(thief(i) for i in range(THIEVES)))
    flood_s = time.monotonic() - flood_started

    # --- the flood: each request refused 400 or 429, invalid ones charged to the bucket --------------------
    charged = 0
    for kind, status, body in flood_answers:
        assert status in (400, 429), (kind, status, body)
        if status == 429:
            assert body["error"] == "rate_limited"
            ledger.refused["rate_limited"] += 1
        elif kind == "json":
            assert body["error"] == "malformed_json"
            ledger.refused["malformed_json"] += 1
            charged += 1
        else:
            assert body["error"] == ("invalid_events" if kind == "batch" else "invalid_order"), body
            ledger.refused["invalid_event"] += 1
            charged += 100 if kind == "batch" else 1
    assert ledger.refused["rate_limited"] > 0
    assert charged <= BURST + RATE * flood_s + 1  # invalid requests cost tokens: the flood ran dry
    likes = [envelope("viewer.liked", f"after-flood-{i}", data={"count": 1}) for i in range(500)]
    status, body = await gw.post("/v1/events", likes, token=FLOODER)  # valid now, but the bucket is spent
    assert status == 429 and body["error"] == "rate_limited", body
    ledger.refused["rate_limited"] += 1

    # --- every honest order has its own, correct decision, the one Redis holds -------------------------------
    assert len(answers) == len(honest)
    accepted: Counter[str] = Counter()
    for order_id, (status, body) in answers.items():
        user = owner[order_id]
        stored = await read_decision(redis, SALE, order_id, user)
        if status == 409:  # refused at the door once the sale sold out: the worker never saw it
            assert (body["error"], body["reason"], body["order_id"]) == ("sold_out", "sold_out", order_id), body
            assert stored is None
            ledger.refused["sold_out"] += 1
            continue
        assert status == 200, (order_id, status, body)
        assert stored is not None and body == stored.to_dict(), (order_id, body, stored)
        assert body["order_id"] == order_id and body["sale_id"] == SALE
        if body["outcome"] == "accepted":
            assert (body["state"], body["qty"]) == ("reserved", 1), body
            accepted[user] += 1
        else:
            assert body["reason"] in ("sold_out", "limit_exceeded"), body
    for order_id, (status, body) in answers.items():
        if status == 200 and body["reason"] == "limit_exceeded":
            assert accepted[owner[order_id]] == LIMIT, (order_id, body)
    demand = USERS + GREEDY * LIMIT
    assert sum(accepted.values()) == min(ALLOTMENT, demand)
    assert max(accepted.values()) <= LIMIT

    # --- reused order ids: the owners' orders are untouched ----------------------------------------------------
    assert len(thefts) == THIEVES
    for order_id, victim, name in thefts:
        rec = await order_record(redis, SALE, order_id)
        assert (rec.user_id, rec.event_id) == (victim, order_event_id(SALE, order_id))
        assert rec.state == answers[order_id][1]["state"]  # reserved stays reserved: the cancels were refused
        taken = await read_decision(redis, SALE, order_id, name)
        assert taken is not None and (taken.outcome, taken.reason) == ("rejected", "order_id_taken")

    # --- the worker has read everything: forgeries dropped, the thieves' cancels dead-lettered ----------------
    async def worker_caught_up() -> bool:
        samples = await scrape(worker_port)
        return (total(samples, "flashsale_dead_letters_total") >= THIEVES
                and total(samples, "flashsale_unsigned_outputs_dropped_total", topic=DECISIONS) >= forged)

    await eventually(worker_caught_up, "the worker to dead-letter the thieves' cancels and drop the forgeries")

    async def waiter_dropped_all() -> bool:
        assert gw.state.waiter is not None
        return gw.state.waiter.unsigned_dropped >= forged

    await eventually(waiter_dropped_all, "the gateway's waiter to drop every forgery")
    assert gw.state.waiter is not None and gw.state.waiter.unsigned_dropped == forged

    async def counted(sale_id: str, n: int) -> bool:
        return int(await redis.hget(keys.sale_base(sale_id), "accepted") or 0) >= n

    await eventually(lambda: counted(SALE, ALLOTMENT), "the counters to count the accepted orders")

    # --- skewed clocks: decided, and reserved, by the gateway's record time, not the client's ts -----------
    for order_id, (user, before, after) in skewed.items():
        async def has_decision(order_id: str = order_id, user: str = user) -> bool:
            return await read_decision(redis, CLOCK, order_id, user) is not None

        await eventually(has_decision, f"the decision on {order_id}")
        rec = await order_record(redis, CLOCK, order_id)
        assert (rec.state, rec.reason) == ("reserved", ""), (order_id, rec)  # never sale_not_active
        assert before - 1000 <= rec.ts <= after + 1000, (order_id, rec.ts, before, after)
        assert rec.reserved_until == rec.ts + CLOCK_TTL_S * 1000, (order_id, rec)
    for order_id in ("clk-seconds", "evil-o", "evil-o2"):
        assert await redis.hget(keys.sale_orders(CLOCK), order_id) is None

    # --- the payment service pays five honest reservations ---------------------------------------------------
    reserved = [o for o, (s, b) in answers.items() if s == 200 and b["outcome"] == "accepted"]
    for order_id in reserved[:5]:
        status, body = await gw.post(f"/v1/sales/{SALE}/orders/{order_id}/pay", {"amount": PRICE}, token=PAYMENTS)
        assert (status, body["state"]) == (200, "sold"), body

    # --- 0 oversold, the invariant, nothing the hostile clients sent changed the sale ------------------------
    sale = await sale_hash(redis, SALE)
    allotted, available = int(sale["allotted"]), int(sale["available"])
    held, sold = int(sale["reserved"]), int(sale["sold"])
    assert allotted == available + held + sold, sale
    assert (allotted, available, held, sold) == (ALLOTMENT, 0, ALLOTMENT - 5, 5), sale
    assert (sale["price"], sale["per_user_limit"], sale["status"], sale["soldout"]) == (
        str(PRICE), str(LIMIT), "open", "1"), sale
    assert int(sale["accepted"]) == ALLOTMENT and int(sale.get("removal_pending") or 0) == 0, sale
    assert THIEVES <= int(sale["rej_order_id_taken"]) <= 2 * THIEVES, sale
    records = [parse_order_record(v) for v in (await redis.hgetall(keys.sale_orders(SALE))).values()]
    holding = [r for r in records if r.state in ("reserved", "sold")]
    assert sum(r.qty for r in holding) == ALLOTMENT and all(r.user_id in owner.values() for r in holding)
    clock = await sale_hash(redis, CLOCK)
    assert int(clock["allotted"]) == int(clock["available"]) + int(clock["reserved"]) + int(clock["sold"]) == 10
    assert int(clock["accepted"]) == len(skewed)
    assert int(await redis.hget(keys.sale_base(SALE), "accepted") or 0) == ALLOTMENT  # forgeries never counted

    # --- nothing the gateway refused was published ------------------------------------------------------------
    published = int(gw.metric("flashsale_gateway_records_total"))
    assert await end_offsets(broker.bootstrap, topics[ENGAGEMENT]) == 0
    assert await end_offsets(broker.bootstrap, topics[ORDERS]) == published
    messages = await read_topic(broker.bootstrap, topics[ORDERS], lambda ms: len(ms) >= published, timeout=20,
                                raw=True)
    events = [e for m in messages for e in decode_record(m.value).events]
    by_type: dict[str, list[Any]] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e)
    assert set(by_type) == {"sale.opened", "order.placed", "order.cancelled", "order.paid"}, set(by_type)
    assert sorted(e.event_id for e in by_type["sale.opened"]) == sorted([opened["event_id"],
                                                                         clock_opened["event_id"]])
    assert sorted(e.data.order_id for e in by_type["order.paid"]) == sorted(reserved[:5])
    assert sorted(e.event_id for e in by_type["order.cancelled"]) == sorted(f"thief-cancel-{i}"
                                                                            for i in range(THIEVES))
    assert not [e.event_id for e in events if e.event_id.startswith(("evil-", "flood-", "after-flood-"))]
    thieves = {name for _, _, name in thefts}
    for e in by_type["order.placed"]:
        if e.user_id in thieves or e.data.sale_id == CLOCK:
            continue
        assert e.event_id == order_event_id(SALE, e.data.order_id) and owner[e.data.order_id] == e.user_id, e

    # every record on the decisions topic is signed by the worker's key, except exactly the forgeries
    keys_ = OutputKeys.parse(KEY)
    assert keys_ is not None
    n_decisions = await end_offsets(broker.bootstrap, topics[DECISIONS])
    decisions = await read_topic(broker.bootstrap, topics[DECISIONS], lambda ms: len(ms) >= n_decisions,
                                 timeout=20, raw=True)
    assert sum(not keys_.verify(DECISIONS, m.value, m.headers) for m in decisions) == forged
    assert not [e.event_id for m in decisions for e in decode_record(m.value).events
                if e.event_id.startswith("evil-")]

    # --- every refusal was counted -----------------------------------------------------------------------------
    assert gw.samples("flashsale_gateway_rejected_total", "reason") == dict(ledger.refused), ledger.refused
    assert gw.metric("flashsale_gateway_events_total", outcome="forbidden") == ledger.forbidden_items
    assert gw.metric("flashsale_gateway_commands_total", command="pay", outcome="done") == 5
    assert gw.metric("flashsale_gateway_commands_total", command="pay", outcome="refused") == THIEVES
    assert gw.metric("flashsale_gateway_commands_total", command="cancel", outcome="refused") == THIEVES
    assert gw.metric("flashsale_gateway_commands_total", command="open", outcome="done") == 2
    # the buyer is never rate limited: its only 429s are admission control's "retry" (issue 14), each retried
    assert gw.metric("flashsale_gateway_requests_total", route="/v1/sales/{sale_id}/orders",
                     status="429") == ledger.refused["units_in_flight"]
    samples = await scrape(worker_port)
    assert total(samples, "flashsale_dead_letters_total") == THIEVES
    assert total(samples, "flashsale_dead_letters_total", reason="not_owner") == THIEVES
    assert total(samples, "flashsale_unsigned_outputs_dropped_total", topic=DECISIONS) == forged
    assert total(samples, "flashsale_client_time_clamped_total", topic=ORDERS) >= len(skewed)
    assert total(samples, "flashsale_order_decisions_total", outcome="accepted") == ALLOTMENT + len(skewed)
    assert total(samples, "flashsale_order_decisions_total", outcome="rejected", reason="order_id_taken") == int(
        sale["rej_order_id_taken"])
    assert total(samples, "flashsale_stock_invariant_violations") == 0
