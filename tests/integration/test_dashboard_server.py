"""The dashboard server through aiohttp's test client, against the real redis-server fixture."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from consumers.dashboard.server import STATIC_DIR, create_app
from consumers.dashboard.settings import DashboardSettings
from flashsale.embedded import free_port
from schemas import keys as rk
from schemas.codec import encode_batch
from schemas.events import OrderPlaced, SaleOpened, ViewerJoined, ViewerLiked, make_event
from schemas.topics import DECISIONS, ENGAGEMENT, ORDERS
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.counters.store import CountersStore
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import StockStore
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.integration

WAIT_S = 10.0


def settings_for(redis_url: str, **kw: Any) -> DashboardSettings:
    opts: dict[str, Any] = {"redis_url": redis_url, "push_interval_s": 0.1, "idle_room_grace_s": 0.0}
    opts.update(kw)
    return DashboardSettings(**opts)


@pytest.fixture
async def client(redis_server: RedisServer, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings_for(redis_server.url), registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def sse_events(resp: ClientResponse, n: int, kind: str = "snapshot") -> list[dict[str, Any]]:
    """Read ``n`` events of ``kind`` from an open text/event-stream response (bounded in time)."""
    out: list[dict[str, Any]] = []
    event = None
    async with asyncio.timeout(WAIT_S):
        while len(out) < n:
            line = await resp.content.readline()
            assert line, "stream ended"
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and event == kind:
                out.append(orjson.loads(text[6:]))
    return out


async def metric(client: TestClient[Any, Any], name: str) -> float:
    body = await (await client.get("/metrics")).text()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", body, re.M)
    assert match, f"{name} not exported"
    return float(match.group(1))


async def test_health_ready_metrics(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["redis"] == "ok"
    body = await (await client.get("/metrics")).text()
    for name in ("flashsale_dashboard_connections", "flashsale_dashboard_pushes_total",
                 "flashsale_dashboard_push_duration_seconds_bucket"):
        assert name in body


async def test_not_ready_without_redis() -> None:
    app = create_app(settings_for(f"redis://127.0.0.1:{free_port()}/0"), registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        resp = await c.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["status"] == "unavailable"
        assert (await c.get("/healthz")).status == 200  # alive, just not ready


async def test_page_and_assets_are_all_local(client: TestClient[Any, Any]) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/app.js" in refs and "/static/app.css" in refs
    for ref in refs:
        assert ref.startswith(("/", "data:", "?")), f"non-local asset {ref}"
        if ref.startswith("/static/"):
            assert (await client.get(ref)).status == 200
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} references an external URL"
        assert "@import" not in text and "fonts.googleapis" not in text
    js = await client.get("/static/app.js")
    assert js.content_type in ("application/javascript", "text/javascript")


async def test_unknown_room_streams_an_empty_snapshot(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/live/rooms/no-such-room")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    (payload,) = await sse_events(resp, 1)
    assert payload["room_id"] == "no-such-room"
    assert payload["snapshot"] is None
    assert isinstance(payload["rooms"], list)
    assert payload["server_ms"] > 0 and payload["interval_ms"] == 100
    resp.close()


async def test_bad_requests(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/live/rooms/r1?channel=carrier_pigeon")
    assert resp.status == 400 and "channel" in (await resp.json())["error"]
    resp = await client.get("/live/rooms/" + "x" * 200)
    assert resp.status == 400


async def test_connection_limit(redis_server: RedisServer, redis_client: aioredis.Redis) -> None:
    app = create_app(settings_for(redis_server.url, max_connections=2), registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        first, second = await c.get("/live/rooms/a"), await c.get("/live/rooms/b")
        await sse_events(first, 1)
        await sse_events(second, 1)
        third = await c.get("/live/rooms/a")
        assert third.status == 503 and "Retry-After" in third.headers
        first.close()
        second.close()


class Sink:
    """Collects what the services would publish (decisions feed the counters, as through Kafka)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def seed_room(redis: aioredis.Redis, room: str, sale_id: str, allotment: int, orders: int,
                    viewers: int) -> dict[str, str]:
    """Run the worker's own services (stock and counters, real Lua, no Kafka) over a small live sale:
    ``viewers`` join and like, a sale opens, ``orders`` distinct users order one unit each. Return the
    sale hash as the worker left it."""
    now = int(time.time() * 1000)
    sku = f"sku-{sale_id}"
    engagement = [make_event(ViewerJoined(), event_id=f"{room}-j{i}", ts=now - 3000 + i, room_id=room,
                             user_id=f"u{i}", channel="live_room") for i in range(viewers)]
    engagement += [make_event(ViewerLiked(count=3), event_id=f"{room}-l{i}", ts=now - 2000 + i, room_id=room,
                              user_id=f"u{i}") for i in range(viewers)]
    opened = make_event(SaleOpened(sale_id=sale_id, sku=sku, price=1990, allotment=allotment, per_user_limit=1,
                                   starts_at=now - 5000, ends_at=now + 3_600_000, reservation_ttl_s=600),
                        event_id=f"open-{sale_id}", ts=now - 4000, room_id=room, user_id="host")
    placed = [make_event(OrderPlaced(order_id=f"{sale_id}-o{i}", sale_id=sale_id, sku=sku, qty=1, unit_price=1990),
                         event_id=f"{sale_id}-e{i}", ts=now - 1000 + i, room_id=room, user_id=f"u{i}",
                         channel="live_room") for i in range(orders)]
    metrics = WorkerMetrics(CollectorRegistry())
    sink = Sink()
    stock = StockService(StockStore(redis, metrics), metrics, sink.send)
    params = CounterParams()
    counters = CountersStore(redis, params, metrics)

    def service(topic: str) -> CountersService:
        return CountersService(counters, params, metrics, sink.send, topic)

    order_records = [Record(ORDERS, 0, 0, encode_batch([opened, *placed]))]
    await stock.handle(order_records)
    await service(ORDERS).handle(order_records)
    await service(ENGAGEMENT).handle([Record(ENGAGEMENT, 0, 0, encode_batch(engagement))])
    decisions = [Record(DECISIONS, 0, i, value) for i, (topic, _, value) in enumerate(sink.sent)
                 if topic == DECISIONS]
    assert decisions, "the stock service decided nothing"
    await service(DECISIONS).handle(decisions)
    raw = await redis.hgetall(rk.sale(sale_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_sale_numbers_in_the_stream_match_redis(client: TestClient[Any, Any],
                                                      redis_client: aioredis.Redis) -> None:
    sale = await seed_room(redis_client, "room-live", "s-live", allotment=5, orders=8, viewers=12)
    assert sale["available"] == "0" and sale["reserved"] == "5"  # 5 reserved, 3 rejected sold out
    resp = await client.get("/live/rooms/room-live")
    payload = (await sse_events(resp, 1))[0]
    resp.close()
    snap = payload["snapshot"]
    assert snap is not None, "no snapshot for a room with viewers and a sale"
    assert snap["room_id"] == "room-live"
    assert snap["viewers_online"] == 12
    assert snap["viewers_peak"] == 12
    assert 0 < snap["as_of_ms"] <= payload["server_ms"]
    assert payload["funnel"]["stages"][0] == {"stage": "viewers", "users": 12, "rate_from_prev": None}
    assert [r["room_id"] for r in payload["rooms"]] == ["room-live"]
    (view,) = [s for s in snap["sales"] if s["sale_id"] == "s-live"]
    for field in ("allotted", "available", "reserved", "sold", "attempts", "accepted"):
        assert view[field] == int(sale[field]), field
    assert view["rejected"]["sold_out"] == int(sale["rej_sold_out"]) == 3
    assert view["sold_out_at"] == int(sale["sold_out_at"])
    # The read API is mounted on the same app and agrees with the stream.
    rooms = await (await client.get("/api/rooms")).json()
    assert [r["room_id"] for r in rooms["rooms"]] == ["room-live"]
    api_sale = await (await client.get("/api/sales/s-live")).json()
    assert api_sale["available"] == view["available"] and api_sale["reserved"] == view["reserved"]
    assert (await client.get("/api/rooms/nope/snapshot")).status == 404


async def test_many_viewers_do_not_multiply_redis_reads(client: TestClient[Any, Any],
                                                        redis_client: aioredis.Redis) -> None:
    await seed_room(redis_client, "room-fan", "s-fan", allotment=100, orders=10, viewers=5)

    async def commands() -> int:
        return int((await redis_client.info("stats"))["total_commands_processed"])

    async def measure(viewers: int, frames: int) -> tuple[float, list[ClientResponse]]:
        """Redis commands per tick while ``viewers`` pages watch the room (our own INFO calls excluded)."""
        streams = [await client.get("/live/rooms/room-fan") for _ in range(viewers)]
        await asyncio.gather(*(sse_events(s, 1) for s in streams))  # everyone is subscribed
        ticks0, cmds0 = await metric(client, "flashsale_dashboard_ticks_total"), await commands()
        await asyncio.gather(*(sse_events(s, frames) for s in streams))
        ticks1, cmds1 = await metric(client, "flashsale_dashboard_ticks_total"), await commands()
        assert ticks1 > ticks0
        return (cmds1 - cmds0 - 1) / (ticks1 - ticks0), streams

    one, streams = await measure(1, 5)
    many, more = await measure(49, 5)
    assert await metric(client, "flashsale_dashboard_connections") == 50
    assert one > 0
    # Reads follow ticks, not viewers: 50 pages cost what one page costs (a little slack for the
    # room list refresh that lands in one window and not the other).
    assert many <= one * 1.5 + 5, (one, many)
    pushes = await metric(client, "flashsale_dashboard_pushes_total")
    ticks = await metric(client, "flashsale_dashboard_ticks_total")
    assert pushes > ticks * 10
    for s in streams + more:
        s.close()


async def test_shutdown_closes_live_streams(redis_server: RedisServer, redis_client: aioredis.Redis) -> None:
    app = create_app(settings_for(redis_server.url), registry=CollectorRegistry())
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        streams = [await client.get(f"/live/rooms/r{i % 2}") for i in range(4)]
        await asyncio.gather(*(sse_events(s, 1) for s in streams))
        closing = asyncio.create_task(client.server.close())
        for s in streams:
            async with asyncio.timeout(WAIT_S):
                while await s.content.readline():
                    pass  # drains to EOF: the server ended the stream
        await closing
    finally:
        await client.close()
