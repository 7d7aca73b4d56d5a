"""The HTTP gateway in-process on a free port, against the real broker and Redis fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from flashsale.embedded import free_port, python_module
from producers.gateway.app import create_app, make_runner
from producers.gateway.routes import STATE
from producers.gateway.settings import GatewaySettings
from producers.gateway.state import GatewayState
from producers.sdk import Publisher
from schemas import keys
from schemas.codec import decode_record
from schemas.events import OrderAccepted, make_event
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-0123456789"
TS = 1_700_000_000_000


@dataclasses.dataclass
class Gateway:
    url: str
    state: GatewayState
    registry: CollectorRegistry
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any = None, *, data: Any = None, headers: dict[str, str] | None = None,
                   token: str | None = TOKEN) -> tuple[int, Any, aiohttp.ClientResponse]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        payload = data if data is not None else orjson.dumps(body)
        async with self.session.post(self.url + path, data=payload, headers=hdrs) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None, resp

    async def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any, aiohttp.ClientResponse]:
        hdrs = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.url + path, headers=hdrs) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, orjson.loads(raw) if "json" in ctype else raw.decode(), resp

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway(broker: Broker, redis_server: RedisServer, topics: dict[str, str], topic_prefix: str) -> GatewayFactory:
    @contextlib.asynccontextmanager
    async def start(*, broker_url: str | None = None, wait_ready: bool = True, **overrides: Any) -> AsyncIterator[
            Gateway]:
        options: dict[str, Any] = {"tokens": (TOKEN,), "rate_limit": 0.0, "decision_timeout_ms": 300,
                                   "auto_create_topics": False, "partitions": 4}
        options.update(overrides)
        settings = GatewaySettings(host="127.0.0.1", port=free_port(), redis_url=redis_server.url,
                                   broker_url=broker_url or broker.url, topic_prefix=topic_prefix, timeout_ms=3000,
                                   **options)
        registry = CollectorRegistry()
        app = create_app(settings, registry)
        runner = make_runner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=1).start()
            state = app[STATE]
            if wait_ready:
                await asyncio.wait_for(state.connected.wait(), 15)
            async with aiohttp.ClientSession() as session:
                yield Gateway(f"http://{settings.host}:{settings.port}", state, registry, session)
        finally:
            await runner.cleanup()
    return start


async def total_records(bootstrap: str, topics: dict[str, str]) -> int:
    """Sum of end offsets over every topic: 0 means nothing at all was published."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for topic in topics.values():
            parts = consumer.partitions_for_topic(topic) or set()
            total += sum((await consumer.end_offsets([TopicPartition(topic, p) for p in parts])).values())
        return total
    finally:
        await consumer.stop()


def event(i: int, *, type_: str = "viewer.liked", room: str = "room-1", **data: Any) -> dict[str, Any]:
    return {"type": type_, "v": 1, "event_id": f"ev-{room}-{i}", "ts": TS + i, "room_id": room,
            "user_id": f"u-{i}", "channel": "live_room", "data": data}


def order_body(**kw: Any) -> dict[str, Any]:
    body = {"order_id": "ord-1", "user_id": "u-1", "room_id": "room-1", "sku": "sku-1", "qty": 1, "unit_price": 990}
    body.update(kw)
    return body


async def test_events_accepted_single_and_batch(gateway: GatewayFactory, broker: Broker,
                                                topics: dict[str, str]) -> None:
    async with gateway() as gw:
        status, body, _ = await gw.post("/v1/events", event(0, count=2))
        assert (status, body) == (202, {"accepted": 1, "records": 1})
        batch = [event(i, room="room-1") for i in range(1, 4)] + [event(9, room="room-2")]
        status, body, _ = await gw.post("/v1/events", batch)
        assert (status, body) == (202, {"accepted": 4, "records": 2})
        assert gw.metric("flashsale_gateway_events_total", outcome="accepted") == 5
        assert gw.metric("flashsale_gateway_requests_total", route="/v1/events", status="202") == 2
    msgs = await read_topic(broker.bootstrap, topics["engagement"], lambda items: len(items) >= 3, timeout=10,
                            raw=True)
    records = sorted((m.key, [e.event_id for e in decode_record(m.value).events]) for m in msgs)
    assert records == [(b"room-1", ["ev-room-1-0"]), (b"room-1", ["ev-room-1-1", "ev-room-1-2", "ev-room-1-3"]),
                       (b"room-2", ["ev-room-2-9"])]


async def test_invalid_input_publishes_nothing(gateway: GatewayFactory, broker: Broker,
                                               topics: dict[str, str]) -> None:
    async with gateway() as gw:
        bad = event(2)
        bad["data"] = {"count": True}
        status, body, _ = await gw.post("/v1/events", [event(0), event(1), bad, {"type": "nope"}])
        assert status == 400 and body["error"] == "invalid_events" and body["invalid"] == 2
        assert body["errors"][0] == {"index": 2, "field": "data.count", "message": "expected integer, got boolean"}
        assert (body["errors"][1]["index"], body["errors"][1]["field"]) == (3, "type")

        status, body, _ = await gw.post("/v1/events", data=b'{"type": ')
        assert status == 400 and body["error"] == "malformed_json" and body["errors"][0]["index"] == -1
        status, body, _ = await gw.post("/v1/events", data=b"")
        assert status == 400 and body["error"] == "malformed_json"
        status, body, _ = await gw.post("/v1/events", [])
        assert status == 400 and body["error"] == "empty_batch"
        status, body, _ = await gw.post("/v1/events", 42)
        assert status == 400 and body["errors"][0]["message"].startswith("event must be a JSON object")
        status, body, _ = await gw.post("/v1/events", data=b"type=x", headers={"Content-Type": "text/plain"})
        assert status == 415 and body["error"] == "unsupported_media_type"
        assert gw.metric("flashsale_gateway_rejected_total", reason="invalid_event") == 3
        assert gw.metric("flashsale_gateway_rejected_total", reason="malformed_json") == 2
        assert gw.metric("flashsale_gateway_events_total", outcome="invalid") == 3
    assert await total_records(broker.bootstrap, topics) == 0


async def test_auth(gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    async with gateway() as gw:
        status, body, resp = await gw.post("/v1/events", event(0), token=None)
        assert status == 401 and body["error"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        status, _, resp = await gw.post("/v1/events", event(0), token=TOKEN + "x")
        assert status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        status, _, _ = await gw.post("/v1/events", event(0), headers={"Authorization": f"Basic {TOKEN}"}, token=None)
        assert status == 401
        status, _, _ = await gw.post("/v1/sales/s/orders", order_body(), token=None)
        assert status == 401
        status, _, _ = await gw.get("/v1/sales/s/orders/o", token=None)
        assert status == 401
        assert TOKEN not in repr(gw.state.settings) and TOKEN not in repr(gw.state.auth)
        assert (await gw.get("/healthz", token=None))[0] == 200  # probes need no token
        assert await total_records(broker.bootstrap, topics) == 0
        status, body, _ = await gw.post("/v1/events", event(0))
        assert (status, body) == (202, {"accepted": 1, "records": 1})


async def test_body_limits(gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    async with gateway(max_body_bytes=2048) as gw:
        big = orjson.dumps([event(i) for i in range(40)])
        assert len(big) > 2048
        status, body, _ = await gw.post("/v1/events", data=big)
        assert status == 413 and body["error"] == "payload_too_large"
        assert body["message"] == f"body of {len(big)} bytes exceeds the limit of 2048 bytes"  # by Content-Length

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        status, body, _ = await gw.post("/v1/events", data=chunks())
        assert status == 413 and body["message"] == "body exceeds the limit of 2048 bytes"
        assert gw.metric("flashsale_gateway_rejected_total", reason="too_large") == 2
    async with gateway(max_events=2) as gw:
        status, body, _ = await gw.post("/v1/events", [event(i) for i in range(3)])
        assert status == 413 and body["error"] == "too_many_events"
    assert await total_records(broker.bootstrap, topics) == 0


async def _slow_client(url: str, token: str) -> bytes:
    """Sends the headers and part of a body, then stalls: the gateway must answer (408) while the
    client still owes bytes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"type\":".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slow_body_is_cut_off(gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    async with gateway(body_timeout_s=0.3) as gw:
        head = await _slow_client(gw.url, TOKEN)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"body_timeout" in head
        assert gw.metric("flashsale_gateway_rejected_total", reason="body_timeout") == 1
    assert await total_records(broker.bootstrap, topics) == 0


async def test_rate_limit(gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    async with gateway(rate_limit=0.001, rate_burst=3) as gw:  # refills one event every ~17 minutes
        status, body, _ = await gw.post("/v1/events", [event(0), event(1)])
        assert status == 202
        status, body, resp = await gw.post("/v1/events", [event(2), event(3)])  # 1 token left, 2 needed
        assert status == 429 and body["error"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
        status, body, _ = await gw.post("/v1/events", event(4))  # exactly the last token
        assert status == 202
        status, body, resp = await gw.post("/v1/events", event(5))  # empty bucket: refused before the body is read
        assert status == 429 and "Retry-After" in resp.headers
        status, _, _ = await gw.post("/v1/sales/s/orders", order_body())
        assert status == 429
        assert gw.metric("flashsale_gateway_rejected_total", reason="rate_limited") == 3
    items = await read_topic(broker.bootstrap, topics["engagement"], lambda items: len(items) >= 3, timeout=10)
    assert sorted(i["event_id"] for i in items) == ["ev-room-1-0", "ev-room-1-1", "ev-room-1-4"]
    assert await total_records(broker.bootstrap, {"orders": topics["orders"]}) == 0


async def test_invalid_requests_are_charged_to_the_rate_limit(gateway: GatewayFactory, broker: Broker,
                                                             topics: dict[str, str]) -> None:
    """Issue 12, item 10: an invalid batch costs what a valid one does, so invalid floods are limited too."""
    async with gateway(rate_limit=0.001, rate_burst=4) as gw:
        bad = {**event(0), "ts": 5}
        status, _, _ = await gw.post("/v1/events", [bad, bad])
        assert status == 400
        status, _, _ = await gw.post("/v1/events", data=b"{not json")
        assert status == 400
        status, _, _ = await gw.post("/v1/sales/s/orders", order_body(qty=0))
        assert status == 400
        status, body, _ = await gw.post("/v1/events", event(1))  # 4 tokens spent on invalid requests
        assert status == 429 and body["error"] == "rate_limited"
    assert await total_records(broker.bootstrap, topics) == 0


async def test_sold_out_answers_409_without_kafka(gateway: GatewayFactory, broker: Broker, topics: dict[str, str],
                                                  redis_client: aioredis.Redis) -> None:
    await redis_client.hset(keys.sale("sale-1"), mapping={"sale_id": "sale-1", "sku": "sku-1", "available": "0",
                                                                "soldout": "1", "status": "open"})
    async with gateway(soldout_cache_ms=10_000) as gw:  # the longest the setting allows
        results = await asyncio.gather(*(gw.post("/v1/sales/sale-1/orders", order_body(order_id=f"o-{i}"))
                                         for i in range(20)))
        for status, body, _ in results:
            assert status == 409
            assert body["error"] == "sold_out" and body["sale_id"] == "sale-1" and body["reason"] == "sold_out"
        assert gw.state.soldout is not None and gw.state.soldout.lookups == 1  # one Redis read for the flood
        assert gw.metric("flashsale_gateway_rejected_total", reason="sold_out") == 20
    assert await total_records(broker.bootstrap, topics) == 0


async def test_retry_of_a_decided_order_gets_its_decision_even_when_sold_out(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], redis_client: aioredis.Redis) -> None:
    """Issue 12, item 5: the order's own decision comes before the sale's sold-out flag."""
    await redis_client.hset(keys.sale("sale-1"), mapping={"sale_id": "sale-1", "sku": "sku-1", "available": "0",
                                                          "soldout": "1", "status": "open"})
    record = {"s": "reserved", "u": "u-1", "q": 1, "p": 990, "d": TS + 300_000, "e": "x", "r": "", "t": TS,
              "k": "sku-1"}
    await redis_client.hset(keys.sale_orders("sale-1"), "ord-1", orjson.dumps(record))
    async with gateway(soldout_cache_ms=10_000) as gw:  # the longest the setting allows
        status, body, _ = await gw.post("/v1/sales/sale-1/orders", order_body(order_id="ord-1"))
        assert status == 200 and (body["outcome"], body["state"]) == ("accepted", "reserved")
        status, body, _ = await gw.post("/v1/sales/sale-1/orders", order_body(order_id="ord-2"))
        assert status == 409 and body["reason"] == "sold_out"
    assert await total_records(broker.bootstrap, topics) == 0


async def test_reusing_another_users_order_id_is_rejected_not_answered_with_their_decision(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], redis_client: aioredis.Redis) -> None:
    """Issue 12, item 4, through the gateway: both on the open path and on the sold-out path."""
    record = {"s": "reserved", "u": "u-1", "q": 1, "p": 990, "d": TS + 300_000, "e": "x", "r": "", "t": TS,
              "k": "sku-1"}
    await redis_client.hset(keys.sale_orders("sale-5"), "ord-1", orjson.dumps(record))
    async with gateway(decision_timeout_ms=2000, soldout_cache_ms=50) as gw:
        status, body, _ = await gw.post("/v1/sales/sale-5/orders", order_body(order_id="ord-1", user_id="u-2"))
        assert status == 200 and (body["outcome"], body["reason"]) == ("rejected", "order_id_taken")
        status, body, _ = await gw.post("/v1/sales/sale-5/orders", order_body(order_id="ord-1", user_id="u-1"))
        assert status == 200 and body["outcome"] == "accepted"
        await redis_client.hset(keys.sale("sale-5"), mapping={"sale_id": "sale-5", "sku": "sku-1", "available": "0",
                                                              "soldout": "1", "status": "open"})
        await asyncio.sleep(0.2)  # the sold-out cache's TTL in this fixture
        status, body, _ = await gw.post("/v1/sales/sale-5/orders", order_body(order_id="ord-1", user_id="u-3"))
        assert status == 200 and body["reason"] == "order_id_taken"


async def test_order_pending_then_status_from_redis(gateway: GatewayFactory, broker: Broker, topics: dict[str, str],
                                                    redis_client: aioredis.Redis) -> None:
    async with gateway(decision_timeout_ms=300) as gw:
        status, body, resp = await gw.post("/v1/sales/sale-2/orders", order_body(order_id="ord-7", qty=2,
                                                                                  referrer_id="kol-1"))
        assert status == 202
        assert body == {"status": "pending", "order_id": "ord-7", "sale_id": "sale-2",
                        "status_url": "/v1/sales/sale-2/orders/ord-7"}
        assert resp.headers["Location"] == body["status_url"]
        status, body, _ = await gw.get("/v1/sales/sale-2/orders/ord-7")
        assert status == 404 and body["status"] == "pending"
        record = {"s": "reserved", "u": "u-1", "q": 2, "p": 990, "d": TS + 300_000, "e": "x", "r": "", "t": TS,
                  "k": "sku-1"}
        await redis_client.hset(keys.sale_orders("sale-2"), "ord-7", orjson.dumps(record))
        status, body, _ = await gw.get("/v1/sales/sale-2/orders/ord-7")
        assert status == 200
        assert body == {"order_id": "ord-7", "sale_id": "sale-2", "outcome": "accepted", "reason": None,
                        "state": "reserved", "qty": 2, "reserved_until": TS + 300_000}
        assert gw.metric("flashsale_gateway_order_decisions_total", outcome="pending") == 1
    [placed] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10)
    assert placed["type"] == "order.placed" and placed["referrer_id"] == "kol-1"
    assert placed["data"] == {"order_id": "ord-7", "sale_id": "sale-2", "sku": "sku-1", "qty": 2, "unit_price": 990}


async def test_order_decided_through_the_decisions_topic(gateway: GatewayFactory, broker: Broker,
                                                         topics: dict[str, str], topic_prefix: str) -> None:
    async with gateway(decision_timeout_ms=15_000) as gw, \
            Publisher(broker.bootstrap, topic_prefix=topic_prefix) as worker:
        request = asyncio.create_task(gw.post("/v1/sales/sale-3/orders", order_body(order_id="ord-3")))
        # play the worker: see the order on the orders topic, answer on the decisions topic
        [placed] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10)
        d = placed["data"]
        await worker.publish(make_event(
            OrderAccepted(order_id=d["order_id"], sale_id=d["sale_id"], sku=d["sku"], qty=d["qty"],
                          unit_price=d["unit_price"], reserved_until=TS + 60_000),
            event_id=f"dec:{d['order_id']}", ts=TS, room_id=placed["room_id"], user_id=placed["user_id"]))
        status, body, _ = await asyncio.wait_for(request, 20)
        assert status == 200
        assert body["outcome"] == "accepted" and body["order_id"] == "ord-3" and body["reserved_until"] == TS + 60_000
        assert gw.metric("flashsale_gateway_order_decisions_total", outcome="accepted") == 1


async def test_with_a_signing_key_a_forged_decision_never_answers_an_order(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], topic_prefix: str) -> None:
    """Issue 12, item 2, through the gateway: an unsigned order.accepted on the decisions topic is dropped."""
    key = "k" * 40
    async with gateway(decision_timeout_ms=1500, output_signing_key=key) as gw, \
            Publisher(broker.bootstrap, topic_prefix=topic_prefix) as forger:
        request = asyncio.create_task(gw.post("/v1/sales/sale-4/orders", order_body(order_id="ord-4")))
        [placed] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10)
        d = placed["data"]
        await forger.publish(make_event(
            OrderAccepted(order_id=d["order_id"], sale_id=d["sale_id"], sku=d["sku"], qty=d["qty"],
                          unit_price=d["unit_price"], reserved_until=TS + 60_000),
            event_id="dec:sale-4:ord-4", ts=TS, room_id=placed["room_id"], user_id=placed["user_id"]))
        status, body, _ = await asyncio.wait_for(request, 20)
        assert status == 202 and body["status"] == "pending"  # nothing a worker signed has answered it
        assert gw.state.waiter is not None and gw.state.waiter.unsigned_dropped >= 1


async def test_order_validation(gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    async with gateway() as gw:
        cases = [
            ({k: v for k, v in order_body().items() if k != "user_id"}, "user_id"),
            (order_body(qty=True), "qty"),
            (order_body(unit_price=-1), "unit_price"),
            (order_body(coupon="FREE"), "coupon"),
            (order_body(channel="tv"), "channel"),
            (order_body(order_id=5), "order_id"),
            (order_body(order_id="o-1\r\nLocation: https://evil"), "order_id"),  # never reaches a header
            (order_body(sku="sku}:x"), "sku"),
        ]
        for body_in, field in cases:
            status, body, _ = await gw.post("/v1/sales/sale-1/orders", body_in)
            assert status == 400 and body["errors"][0]["field"] == field, (field, body)
        status, body, _ = await gw.post("/v1/sales/sale-1/orders", [order_body()])
        assert status == 400
    assert await total_records(broker.bootstrap, topics) == 0


async def test_order_reports_every_invalid_field(gateway: GatewayFactory, broker: Broker,
                                                topics: dict[str, str]) -> None:
    async with gateway() as gw:
        body_in = {k: v for k, v in order_body(qty=True, unit_price=-1, coupon="FREE").items() if k != "user_id"}
        status, body, _ = await gw.post("/v1/sales/sale-1/orders", body_in)
        assert status == 400 and body["invalid"] == 4
        assert sorted(e["field"] for e in body["errors"]) == ["coupon", "qty", "unit_price", "user_id"]
    assert await total_records(broker.bootstrap, topics) == 0


async def test_repeated_keys_are_refused_with_the_field_named(gateway: GatewayFactory, broker: Broker,
                                                             topics: dict[str, str]) -> None:
    """A reader that keeps the first of two keys would see another event than one that keeps the last."""
    async with gateway() as gw:
        good = orjson.dumps(event(0)).decode()
        twice = good.replace('"data":{}', '"data":{"count":1,"count":10000}')
        status, body, _ = await gw.post("/v1/events", data=f"[{good},{twice}]".encode())
        assert status == 400 and body["errors"] == [
            {"index": 1, "field": "data.count", "message": "repeated key: each field may appear once in an object"}]
        order = orjson.dumps(order_body()).decode().replace('"qty":1', '"qty":1,"qty":2')
        status, body, _ = await gw.post("/v1/sales/sale-1/orders", data=order.encode())
        assert status == 400 and [e["field"] for e in body["errors"]] == ["qty"]
        ts_in_seconds = {**event(1), "ts": TS // 1000}
        status, body, _ = await gw.post("/v1/events", ts_in_seconds)
        assert status == 400 and "looks like seconds" in body["errors"][0]["message"]
    assert await total_records(broker.bootstrap, topics) == 0


async def test_health_readiness_and_metrics(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        assert (await gw.get("/healthz"))[:2] == (200, {"status": "ok"})
        status, body, _ = await gw.get("/readyz")
        assert status == 200 and body == {"status": "ready", "kafka": "ok", "redis": "ok"}
        await gw.post("/v1/events", event(0))
        status, text, resp = await gw.get("/metrics")
        assert status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert 'flashsale_gateway_requests_total{route="/v1/events",status="202"} 1.0' in text
        assert 'flashsale_gateway_request_seconds_count{route="/readyz"}' in text
        assert "flashsale_gateway_ready 1.0" in text
        status, body, _ = await gw.get("/nope")
        assert status == 404 and body["error"] == "not_found"
        status, body, resp = await gw.get("/v1/events")
        assert status == 405 and body["error"] == "method_not_allowed" and "POST" in resp.headers["Allow"]
        assert gw.metric("flashsale_gateway_requests_total", route="other", status="404") == 1


async def test_not_ready_without_a_broker(gateway: GatewayFactory) -> None:
    async with gateway(broker_url=f"kafka://127.0.0.1:{free_port()}", wait_ready=False) as gw:
        status, body, _ = await gw.get("/readyz")
        assert status == 503 and body["kafka"] == "connecting" and body["redis"] == "ok"
        assert (await gw.get("/healthz"))[0] == 200
        status, body, resp = await gw.post("/v1/events", event(0))
        assert status == 503 and body["error"] == "broker_unavailable" and resp.headers["Retry-After"] == "1"


async def test_main_serves_and_shuts_down_gracefully_on_sigterm(worker_env: dict[str, str], topics: dict[str, str],
                                                                 tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **worker_env, "FLASHSALE_GATEWAY_PORT": str(port), "FLASHSALE_GATEWAY_TOKEN": TOKEN,
           "FLASHSALE_GATEWAY_DECISION_TIMEOUT_MS": "1500", "FLASHSALE_AUTO_CREATE_TOPICS": "false"}
    proc = python_module("producers.gateway", [], tmp_path, "gateway", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # up to ~30 s for the interpreter to start and Kafka to connect
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as resp:
                        if resp.status == 200:
                            break
                assert proc.alive(), proc.log_path.read_text()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway never became ready")
            # an order waiting for its decision is in flight when SIGTERM arrives: it still gets its answer
            pending = asyncio.create_task(session.post(
                url + "/v1/sales/sale-1/orders", data=orjson.dumps(order_body()),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}))
            await asyncio.sleep(0.5)
            os.kill(proc.pid, signal.SIGTERM)
            async with await asyncio.wait_for(pending, 15) as resp:
                assert resp.status == 202 and (await resp.json())["status"] == "pending"
        code = await asyncio.to_thread(proc.popen.wait, 15)  # exits by itself after the one SIGTERM
        assert code == 0, proc.log_path.read_text()
    finally:
        proc.stop()


async def test_abuse_all_at_once_leaves_a_well_behaved_client_unharmed(gateway: GatewayFactory, broker: Broker,
                                                                       topics: dict[str, str]) -> None:
    """A flood from one client, slow clients, huge bodies and bad tokens at the same time: each gets
    its clear error, while another client's events all pass, the gateway stays ready, and exactly the
    admitted events reach Kafka."""
    flooder, polite, bulky = TOKEN, "polite-token-9876543210", "bulky-token-5555555555"
    async with gateway(tokens=(flooder, polite, bulky), rate_limit=20.0, rate_burst=20, max_body_bytes=4096,
                       body_timeout_s=0.5) as gw:
        async def flood(i: int) -> tuple[int, str]:
            status, _, _ = await gw.post("/v1/events", event(i, room="flood"), token=flooder)
            return status, f"ev-flood-{i}"

        async def huge(i: int) -> int:
            body = [event(1000 * i + k, room="huge") for k in range(80)]
            return (await gw.post("/v1/events", body, token=bulky))[0]

        async def bad_token(i: int) -> int:
            return (await gw.post("/v1/events", event(i, room="bad"), token=f"wrong-{i}"))[0]

        async def well_behaved() -> list[int]:
            out = []
            for i in range(10):
                out.append((await gw.post("/v1/events", event(i, room="polite"), token=polite))[0])
                await asyncio.sleep(0.05)
            return out

        floods, slows, huges, bads, polite_statuses = await asyncio.gather(
            asyncio.gather(*(flood(i) for i in range(300))),
            asyncio.gather(*(_slow_client(gw.url, polite) for _ in range(5))),
            asyncio.gather(*(huge(i) for i in range(5))),
            asyncio.gather(*(bad_token(i) for i in range(20))),
            well_behaved())

        assert polite_statuses == [202] * 10
        admitted = {eid for status, eid in floods if status == 202}
        assert {status for status, _ in floods} == {202, 429}
        assert 20 <= len(admitted) < 300  # the burst, plus what refilled meanwhile
        assert all(head.startswith(b"HTTP/1.1 408") for head in slows), slows
        assert huges == [413] * 5
        assert bads == [401] * 20
        assert gw.metric("flashsale_gateway_rejected_total", reason="rate_limited") == 300 - len(admitted)
        assert gw.metric("flashsale_gateway_rejected_total", reason="too_large") == 5
        assert gw.metric("flashsale_gateway_rejected_total", reason="body_timeout") == 5
        status, body, _ = await gw.get("/readyz")
        assert status == 200 and body["status"] == "ready"

    want = admitted | {f"ev-polite-{i}" for i in range(10)}
    items = await read_topic(broker.bootstrap, topics["engagement"], lambda xs: len(xs) >= len(want), timeout=15)
    await asyncio.sleep(0.5)
    assert sorted(i["event_id"] for i in items) == sorted(want)
    assert await total_records(broker.bootstrap, {"orders": topics["orders"]}) == 0


async def test_with_a_real_worker_orders_are_decided_then_sold_out_is_409(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], topic_prefix: str, worker: Any,
        redis_client: aioredis.Redis) -> None:
    """The whole ordering path: POST → orders topic → the stock worker → decision back to the HTTP
    client; the sell-out flag the worker's script sets turns the next POST into a 409 at the door."""
    import time

    from schemas.events import SaleOpened

    now = int(time.time() * 1000)
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        await pub.publish(make_event(SaleOpened(sale_id="sale-9", sku="sku-1", price=990, allotment=2,
                                                per_user_limit=1, starts_at=now - 1000, ends_at=now + 600_000,
                                                reservation_ttl_s=600),
                                     event_id="open-sale-9", ts=now, room_id="room-1", user_id="host"))
    async with gateway(decision_timeout_ms=20_000, soldout_cache_ms=50) as gw:
        answers = [await gw.post("/v1/sales/sale-9/orders", order_body(order_id=o, user_id=u))
                   for o, u in (("a", "u1"), ("b", "u1"), ("c", "u2"))]
        assert [(s, b["outcome"], b["reason"]) for s, b, _ in answers] == [
            (200, "accepted", None), (200, "rejected", "limit_exceeded"), (200, "accepted", None)]
        for _ in range(100):  # the flag is in Redis once the worker's script ran
            if await redis_client.hget(keys.sale("sale-9"), "soldout") == b"1":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # past the gateway's 50 ms sold-out cache
        status, body, _ = await gw.post("/v1/sales/sale-9/orders", order_body(order_id="d", user_id="u3"))
        assert status == 409 and body["error"] == "sold_out"


CONTROL = "control-token-0123456789"
PAYMENTS = "payments-token-0123456789"
EVERYTHING = "all-scopes-token-0123456789"
SCOPED = (TOKEN, f"{CONTROL}=control", f"{PAYMENTS}=payments", f"{EVERYTHING}=engagement+orders+payments+control")


def open_body(now: int, **kw: Any) -> dict[str, Any]:
    body = {"room_id": "room-1", "sku": "sku-1", "price": 990, "allotment": 5, "per_user_limit": 2,
            "starts_at": now - 1000, "ends_at": now + 600_000, "reservation_ttl_s": 600}
    body.update(kw)
    return body


async def test_a_plain_token_cannot_open_adjust_or_pay_and_outputs_are_always_refused(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str]) -> None:
    """Issue 12, items 1 and 2: a token written alone has engagement+orders; control, payments and the
    pipeline's outputs are refused with 403 naming the type and the scope, and nothing is published."""
    control_events = [
        {**event(0), "type": "sale.opened", "data": {"sale_id": "s", "sku": "k", "price": 1, "allotment": 10**8,
                                                      "per_user_limit": 10_000, "starts_at": TS, "ends_at": TS + 1}},
        {**event(1), "type": "stock.adjusted", "data": {"sale_id": "s", "sku": "k", "delta": 10**8}},
        {**event(2), "type": "order.paid", "data": {"order_id": "o", "sale_id": "s", "sku": "k"}},
    ]
    outputs = [{**event(3), "type": "order.accepted", "data": {"order_id": "o", "sale_id": "s", "sku": "k", "qty": 1,
                                                               "unit_price": 1, "reserved_until": TS}},
               {**event(4), "type": "sale.sold_out", "data": {}}]
    async with gateway(tokens=SCOPED) as gw:
        status, body, _ = await gw.post("/v1/events", [event(9)] + control_events)
        assert status == 403 and body["error"] == "forbidden_event_type" and body["invalid"] == 3
        assert [(e["index"], e["message"]) for e in body["errors"]] == [
            (1, "sale.opened needs the control scope; this caller has engagement+orders"),
            (2, "stock.adjusted needs the control scope; this caller has engagement+orders"),
            (3, "order.paid needs the payments scope; this caller has engagement+orders")]
        for token in (TOKEN, EVERYTHING):  # outputs are refused whatever the scopes, valid or not
            status, body, _ = await gw.post("/v1/events", outputs, token=token)
            assert status == 403 and [e["index"] for e in body["errors"]] == [0, 1]
            assert "pipeline output" in body["errors"][0]["message"]
        status, body, _ = await gw.post("/v1/sales/s/open", open_body(TS))
        assert status == 403 and body["error"] == "forbidden" and "control scope" in body["message"]
        status, body, _ = await gw.post("/v1/sales/s/stock", {"delta": 10**8, "request_id": "r"})
        assert status == 403
        status, body, _ = await gw.post("/v1/sales/s/close", {})
        assert status == 403
        status, body, _ = await gw.post("/v1/sales/s/orders/o/pay", {"user_id": "u-1"})
        assert status == 403 and "payments scope" in body["message"]
        status, body, _ = await gw.post("/v1/sales/s/orders/o", order_body(), token=PAYMENTS)  # no such POST route
        assert status == 405
        status, body, _ = await gw.post("/v1/sales/s/orders", order_body(), token=CONTROL)
        assert status == 403  # control is not orders
        status, body, _ = await gw.post("/v1/events", event(5), token=PAYMENTS)
        assert status == 403 and "engagement scope" in body["errors"][0]["message"]
        assert gw.metric("flashsale_gateway_rejected_total", reason="missing_scope") == 7
        assert gw.metric("flashsale_gateway_rejected_total", reason="output_type") == 2
        assert gw.metric("flashsale_gateway_events_total", outcome="forbidden") == 3 + 2 + 2 + 1
    async with gateway(tokens=()) as gw:  # auth off: engagement and orders only, unless configured
        status, body, _ = await gw.post("/v1/events", control_events, token=None)
        assert status == 403 and body["invalid"] == 3
        status, _, _ = await gw.post("/v1/sales/s/open", open_body(TS), token=None)
        assert status == 403
        status, _, _ = await gw.post("/v1/events", outputs, token=None)
        assert status == 403
    assert await total_records(broker.bootstrap, topics) == 0


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(gateway: GatewayFactory, broker: Broker,
                                                              topics: dict[str, str]) -> None:
    """Issue 12, item 10: a client cannot pick its own rate-limit key by sending X-Forwarded-For."""
    async with gateway(tokens=(), rate_limit=0.001, rate_burst=1) as gw:  # nothing trusted: keyed by the peer
        first, _, _ = await gw.post("/v1/events", event(0), headers={"X-Forwarded-For": "198.51.100.1"}, token=None)
        second, _, _ = await gw.post("/v1/events", event(1), headers={"X-Forwarded-For": "198.51.100.2"}, token=None)
        assert (first, second) == (202, 429)
    async with gateway(tokens=(), rate_limit=0.001, rate_burst=1, trusted_proxies="10.0.0.0/8") as gw:
        first, _, _ = await gw.post("/v1/events", event(2), headers={"X-Forwarded-For": "198.51.100.1"}, token=None)
        second, _, _ = await gw.post("/v1/events", event(3), headers={"X-Forwarded-For": "198.51.100.2"}, token=None)
        assert (first, second) == (202, 429)  # the peer (127.0.0.1) is no trusted proxy
    async with gateway(tokens=(), rate_limit=0.001, rate_burst=1, trusted_proxies="127.0.0.1") as gw:
        statuses = [(await gw.post("/v1/events", event(4 + i), token=None,
                                   headers={"X-Forwarded-For": f"6.6.6.6, 198.51.100.{i}"}))[0] for i in range(3)]
        assert statuses == [202, 202, 202]  # behind a trusted proxy: one bucket per real client
        again, _, _ = await gw.post("/v1/events", event(9), token=None,
                                    headers={"X-Forwarded-For": "7.7.7.7, 198.51.100.0"})
        assert again == 429  # a forged left-most hop does not buy a new bucket


async def test_with_a_real_worker_control_pay_and_cancel_answer_what_the_worker_did(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], worker: Any,
        redis_client: aioredis.Redis) -> None:
    """Open → order → pay → 200 sold; another user's cancel → 409 not_owner; cancel → 200; pay after
    cancel → 409; stock and close answer the sale's state once the worker applied them."""
    import time

    now = int(time.time() * 1000)
    async with gateway(tokens=SCOPED, decision_timeout_ms=20_000) as gw:
        status, body, _ = await gw.post("/v1/sales/sale-7/open", open_body(now), token=CONTROL)
        assert status == 200, body
        assert body["status"] == "applied" and body["sale"]["status"] == "open"
        assert (body["sale"]["allotted"], body["sale"]["available"], body["sale"]["price"]) == (5, 5, 990)
        assert await redis_client.sismember(keys.sale_applied("sale-7"), body["event_id"])
        status, again, _ = await gw.post("/v1/sales/sale-7/open", open_body(now), token=CONTROL)
        assert status == 200 and again["event_id"] == body["event_id"]  # a retry is a replay

        status, body, _ = await gw.post("/v1/sales/sale-7/orders", order_body(order_id="a", user_id="u1"))
        assert status == 200 and body["outcome"] == "accepted"
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/a/pay", {"user_id": "u1"})
        assert status == 403  # paying needs the payments scope
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/a/pay", {"amount": 990}, token=PAYMENTS)
        assert (status, body["state"]) == (200, "sold"), body
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/a/pay", {}, token=PAYMENTS)
        assert (status, body["state"]) == (200, "sold")  # a retried payment is answered, not charged twice

        status, body, _ = await gw.post("/v1/sales/sale-7/orders", order_body(order_id="b", user_id="u2"))
        assert status == 200 and body["outcome"] == "accepted"
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/b/cancel", {"user_id": "u3"})
        assert status == 409 and (body["error"], body["reason"]) == ("cancellation_refused", "not_owner")
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/b/cancel", {})
        assert status == 400 and body["errors"][0]["field"] == "user_id"
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/b/cancel", {"user_id": "u2"})
        assert (status, body["state"]) == (200, "cancelled"), body
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/b/pay", {}, token=PAYMENTS)
        assert status == 409 and (body["error"], body["reason"], body["state"]) == (
            "payment_refused", "order_cancelled", "cancelled")
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/a/cancel", {"user_id": "u1"})
        assert status == 409 and body["reason"] == "already_paid"
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/zz/pay", {}, token=PAYMENTS)
        assert status == 409 and body["reason"] == "unknown_order"
        status, body, _ = await gw.post("/v1/sales/sale-7/orders", order_body(order_id="c", user_id="u1", qty=2))
        assert status == 200 and (body["outcome"], body["reason"]) == ("rejected", "limit_exceeded")
        status, body, _ = await gw.post("/v1/sales/sale-7/orders/c/pay", {}, token=PAYMENTS)
        assert status == 409 and body["reason"] == "not_accepted"

        status, body, _ = await gw.post("/v1/sales/sale-7/stock", {"delta": 3, "request_id": "restock-1"},
                                        token=CONTROL)
        assert status == 200 and (body["sale"]["allotted"], body["sale"]["available"]) == (8, 7), body
        status, body, _ = await gw.post("/v1/sales/sale-7/stock", {"delta": 3, "request_id": "restock-1"},
                                        token=CONTROL)
        assert status == 200 and body["sale"]["allotted"] == 8  # the same request id: a replay
        status, body, _ = await gw.post("/v1/sales/sale-7/stock", {"delta": 3}, token=CONTROL)
        assert status == 400 and body["errors"][0]["field"] == "request_id"
        status, body, _ = await gw.post("/v1/sales/sale-7/close", {}, token=CONTROL)
        assert status == 200 and body["sale"]["status"] == "closed"
        status, body, _ = await gw.post("/v1/sales/never/close", {}, token=CONTROL)
        assert status == 409 and body["error"] == "unknown_sale"
        status, body, _ = await gw.post("/v1/sales/sale-7/open", open_body(now, sku="other"), token=CONTROL)
        assert status == 409 and body["error"] == "sku_mismatch"
        assert gw.metric("flashsale_gateway_commands_total", command="pay", outcome="done") == 2
        assert gw.metric("flashsale_gateway_commands_total", command="pay", outcome="refused") == 3
        assert gw.metric("flashsale_gateway_rejected_total", reason="not_owner") == 1
    sale = await redis_client.hgetall(keys.sale("sale-7"))
    assert (sale[b"sold"], sale[b"paid"], sale[b"cancelled"], sale[b"reserved"]) == (b"1", b"1", b"1", b"0")
