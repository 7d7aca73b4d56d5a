"""The dashboard server through aiohttp's test client, against the real redis-server fixture: the
page, the live feed and the read API, each opened only by a signed link for its room (or every room)."""

from __future__ import annotations

import asyncio
import base64
import logging
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

from consumers.access import Signer
from consumers.dashboard.server import SIGNER, STATIC_DIR, create_app
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
KEY = "dashboard-test-key-0123456789abcdef"
KEYED = Signer(KEY.encode())
HOST_TOKEN = KEYED.mint(None, 3600)  # every room and the room list
BEARER = {"Authorization": f"Bearer {HOST_TOKEN}"}


def settings_for(redis_url: str, **kw: Any) -> DashboardSettings:
    opts: dict[str, Any] = {"redis_url": redis_url, "push_interval_s": 0.1, "idle_room_grace_s": 0.0,
                            "key": KEY}
    opts.update(kw)
    return DashboardSettings(**opts)


@pytest.fixture
async def client(redis_server: RedisServer, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    """A client that sends a host token with every request."""
    app = create_app(settings_for(redis_server.url), registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1"), headers=BEARER) as c:
        yield c


@pytest.fixture
async def anon(redis_server: RedisServer, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    """A client that sends no token unless a test gives one."""
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
    async with TestClient(TestServer(app, host="127.0.0.1"), headers=BEARER) as c:
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
    client = TestClient(TestServer(app, host="127.0.0.1"), headers=BEARER)
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


# ---- read-side access (issue 12, item 11) --------------------------------------------------------

ROOM_PATHS = ("/api/rooms/{room}/snapshot", "/api/rooms/{room}/funnel", "/live/rooms/{room}")


def forged_for(token: str, room: str) -> str:
    """``token`` with its room bytes replaced: the tag no longer matches."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return base64.urlsafe_b64encode(raw[:26] + room.encode()).rstrip(b"=").decode()


async def refused(resp: ClientResponse, status: int) -> str:
    assert resp.status == status, (resp.url, resp.status)
    assert resp.content_type == "application/json"
    body = await resp.json()
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    return str(body["error"])


@pytest.fixture
async def two_rooms(redis_client: aioredis.Redis) -> None:
    await seed_room(redis_client, "room-a", "s-a", allotment=5, orders=3, viewers=4)
    await seed_room(redis_client, "room-b", "s-b", allotment=5, orders=2, viewers=3)


async def test_without_a_valid_token_the_api_and_the_stream_refuse_with_401(
        anon: TestClient[Any, Any], two_rooms: None) -> None:
    other_key = Signer(b"another-key-of-another-dashboard").mint("room-a", 3600)
    garbage = ["", "x", "!!!!", "A" * 600, other_key, forged_for(KEYED.mint("room-b", 3600), "room-a")]
    paths = ["/api/rooms", "/api/sales/s-a", "/api/access"] + [p.format(room="room-a") for p in ROOM_PATHS]
    for path in paths:
        assert "token is required" in await refused(await anon.get(path), 401)
        for bad in garbage:
            resp = await anon.get(path, headers={"Authorization": f"Bearer {bad}"} if bad else {})
            await refused(resp, 401)
            await refused(await anon.get(path, params={"t": bad}), 401)


async def test_a_room_token_opens_its_room_and_refuses_every_other_with_403(
        anon: TestClient[Any, Any], two_rooms: None) -> None:
    token_a = KEYED.mint("room-a", 3600)
    header = {"Authorization": f"Bearer {token_a}"}
    snap = await anon.get("/api/rooms/room-a/snapshot", headers=header)
    assert snap.status == 200 and (await snap.json())["room_id"] == "room-a"
    assert (await anon.get("/api/rooms/room-a/funnel", params={"t": token_a})).status == 200
    sale = await anon.get("/api/sales/s-a", headers=header)
    assert sale.status == 200 and (await sale.json())["room_id"] == "room-a"
    for path in ROOM_PATHS:
        error = await refused(await anon.get(path.format(room="room-b"), params={"t": token_a}), 403)
        assert "room-a" in error and "room-b" in error
    await refused(await anon.get("/api/sales/s-b", headers=header), 403)
    # an unknown sale answers like a foreign one: a room's link cannot probe other rooms' sale ids
    await refused(await anon.get("/api/sales/no-such-sale", headers=header), 403)
    await refused(await anon.get("/api/rooms", headers=header), 403)  # the room list is the host's
    access = await (await anon.get("/api/access", headers=header)).json()
    assert access["room_id"] == "room-a" and access["all_rooms"] is False
    # The room's stream carries the room list cut down to that room; the host's carries every room.
    stream = await anon.get("/live/rooms/room-a", params={"t": token_a})
    (payload,) = await sse_events(stream, 1)
    stream.close()
    assert payload["snapshot"]["room_id"] == "room-a"
    assert [r["room_id"] for r in payload["rooms"]] == ["room-a"]
    host = await anon.get("/live/rooms/room-a", params={"t": HOST_TOKEN})
    (payload,) = await sse_events(host, 1)
    host.close()
    assert {r["room_id"] for r in payload["rooms"]} == {"room-a", "room-b"}
    rooms = await anon.get("/api/rooms", headers=BEARER)
    assert {r["room_id"] for r in (await rooms.json())["rooms"]} == {"room-a", "room-b"}
    assert (await anon.get("/api/sales/no-such-sale", headers=BEARER)).status == 404


async def test_an_expired_token_is_refused(anon: TestClient[Any, Any], two_rooms: None) -> None:
    past = Signer(KEY.encode(), clock=lambda: time.time() - 7200)
    for token in (past.mint("room-a", 3600), past.mint(None, 3600)):
        for path in [p.format(room="room-a") for p in ROOM_PATHS] + ["/api/rooms", "/api/sales/s-a"]:
            assert "expired" in await refused(await anon.get(path, params={"t": token}), 401)
        page = await anon.get("/rooms/room-a", params={"t": token})
        assert page.status == 401 and page.content_type == "text/html"
        assert "expired" in await page.text()


async def test_the_stream_ends_when_its_token_expires(anon: TestClient[Any, Any], two_rooms: None) -> None:
    short = KEYED.mint("room-a", 1.5)
    stream = await anon.get("/live/rooms/room-a", params={"t": short})
    assert stream.status == 200
    await sse_events(stream, 1)
    async with asyncio.timeout(WAIT_S):
        while await stream.content.readline():
            pass  # drains to EOF: the server ended the stream at the token's expiry
    await refused(await anon.get("/live/rooms/room-a", params={"t": short}), 401)


async def test_the_page_needs_a_link_and_says_so(anon: TestClient[Any, Any]) -> None:
    token_a = KEYED.mint("room-a", 3600)
    for path, params, status in [("/", {}, 401), ("/rooms/room-a", {}, 401), ("/rooms/room-a", {"t": "nope"}, 401),
                                 ("/rooms/room-b", {"t": token_a}, 403), ("/", {"room": "room-b", "t": token_a}, 403)]:
        page = await anon.get(path, params=params)
        assert page.status == status and page.content_type == "text/html", (path, params)
        text = await page.text()
        assert f'data-status="{status}"' in text and "flashsale dashboard-link" in text
    ok = await anon.get("/rooms/room-a", params={"t": token_a})
    assert ok.status == 200 and 'src="/static/app.js"' in await ok.text()
    assert ok.headers["Referrer-Policy"] == "no-referrer"  # the URL carries the token
    # one room's link on / goes to that room's page
    moved = await anon.get("/", params={"t": token_a, "channel": "share_link"}, allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == f"/rooms/room-a?t={token_a}&channel=share_link"
    assert (await anon.get("/", params={"t": HOST_TOKEN})).status == 200
    assert (await anon.get("/rooms/room-b", params={"t": HOST_TOKEN})).status == 200
    assert (await anon.get("/static/app.js")).status == 200  # assets hold no data


async def test_health_and_metrics_stay_open_and_show_no_business_data(anon: TestClient[Any, Any],
                                                                      two_rooms: None) -> None:
    assert (await anon.get("/healthz")).status == 200
    assert (await anon.get("/readyz")).status == 200
    stream = await anon.get("/live/rooms/room-a", params={"t": HOST_TOKEN})
    await sse_events(stream, 1)
    stream.close()
    metrics = await anon.get("/metrics")
    assert metrics.status == 200
    body = await metrics.text()
    assert "flashsale_dashboard_ticks_total" in body
    for secret in ("room-a", "room-b", "s-a", "s-b", "gmv", "1990"):
        assert secret not in body


async def test_tokens_are_never_logged(anon: TestClient[Any, Any], two_rooms: None,
                                       caplog: pytest.LogCaptureFixture) -> None:
    token_a = KEYED.mint("room-a", 3600)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("consumers").info("marker")
        await anon.get("/api/rooms/room-a/snapshot", params={"t": token_a})
        await anon.get("/api/rooms/room-b/snapshot", params={"t": token_a})
        await anon.get("/rooms/room-b", params={"t": token_a})
        stream = await anon.get("/live/rooms/room-a", params={"t": token_a})
        await sse_events(stream, 1)
        stream.close()
    # aiohttp's access log (on in test servers) prints URLs; `flashsale dashboard` runs without one.
    ours = [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"]
    assert ours and not [m for m in ours if token_a in m]


async def test_without_a_key_the_dashboard_makes_one_and_is_never_open(redis_server: RedisServer) -> None:
    app = create_app(settings_for(redis_server.url, key=None), registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        await refused(await c.get("/api/rooms"), 401)
        await refused(await c.get("/api/rooms", params={"t": HOST_TOKEN}), 401)  # the test key opens nothing
        own = app[SIGNER].mint(None, 60)  # what `flashsale up` would print, with the key it made
        assert (await c.get("/api/rooms", params={"t": own})).status == 200
