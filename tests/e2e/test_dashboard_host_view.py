"""The host view (issue 15) in headless Chromium: several sales in one room, each in another state.

The room is built by the worker's own services (stock and counters, real Lua, real redis-server,
no Kafka): closed sales, a sale that sold out and was restocked, an announced sale, a live one
with an order burst that raises a real spike alert, viewers on two channels and none. The page is
the dashboard app in process, opened with a signed room link on a phone-sized viewport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from consumers import readmodel
from consumers.access import Signer
from consumers.dashboard.server import create_app
from consumers.dashboard.settings import DashboardSettings
from schemas import keys as rk
from schemas.codec import encode_batch
from schemas.events import (
    Event,
    OrderPaid,
    OrderPlaced,
    Payload,
    SaleClosed,
    SaleOpened,
    StockAdjusted,
    ViewerJoined,
    make_event,
)
from schemas.topics import DECISIONS, ENGAGEMENT, ORDERS
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.counters.store import CountersStore
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import StockStore
from tests.harness.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = "host-view-key-0123456789abcdef0123"
SIGNER = Signer(KEY.encode())
ROOM = "host-room"
PHONE = {"width": 390, "height": 844}
# Sale ids sort the wrong way on purpose: by id, the closed sales come first and the live one last.
CLOSED_OLD, CLOSED_NEW, RESTOCKED, UPCOMING, LIVE = "a-closed-1", "b-closed-2", "c-restock", "d-next", "z-live"
LIVE_TITLE, RESTOCKED_TITLE = "Silk scarf 真丝", "Jade bangle"


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        await b.close()


class Sink:
    """What the services would publish; decisions are fed to the counters as through Kafka."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _ev(payload: Payload, n: int, ts: int, user: str = "host", channel: str | None = None) -> Event:
    if channel is None:  # an event that names no channel: the contract files it under "other"
        return make_event(payload, event_id=f"hv-{n}", ts=ts, room_id=ROOM, user_id=user)
    return make_event(payload, event_id=f"hv-{n}", ts=ts, room_id=ROOM, user_id=user, channel=channel)


def _open(sale_id: str, allotment: int, starts_at: int, ends_at: int) -> SaleOpened:
    return SaleOpened(sale_id=sale_id, sku=f"SKU-{sale_id}", price=12_345, allotment=allotment, per_user_limit=5,
                      starts_at=starts_at, ends_at=ends_at, reservation_ttl_s=3600)


def _order(sale_id: str, i: int) -> OrderPlaced:
    return OrderPlaced(order_id=f"{sale_id}-o{i}", sale_id=sale_id, sku=f"SKU-{sale_id}", qty=1, unit_price=12_345)


def room_events(now: int) -> tuple[list[Event], list[Event]]:
    """(engagement, orders) of a stream that has run for 20 minutes, in event-time order."""
    n = iter(range(1_000_000))
    orders: list[Event] = []

    def add(payload: Payload, ts: int, user: str = "host", channel: str | None = "live_room") -> None:
        orders.append(_ev(payload, next(n), ts, user, channel))

    hour = 3_600_000
    add(_open(CLOSED_OLD, 10, now - 20 * 60_000, now + hour), now - 20 * 60_000)
    add(SaleClosed(sale_id=CLOSED_OLD, sku=f"SKU-{CLOSED_OLD}"), now - 15 * 60_000)
    add(_open(CLOSED_NEW, 10, now - 12 * 60_000, now + hour), now - 12 * 60_000)
    add(SaleClosed(sale_id=CLOSED_NEW, sku=f"SKU-{CLOSED_NEW}"), now - 5 * 60_000)
    add(_open(RESTOCKED, 2, now - 4 * 60_000, now + hour), now - 4 * 60_000)
    for i in range(2):
        add(_order(RESTOCKED, i), now - 3 * 60_000 + i, user=f"r{i}")
    add(StockAdjusted(sale_id=RESTOCKED, sku=f"SKU-{RESTOCKED}", delta=3, reason="restock"), now - 2 * 60_000)
    add(_open(UPCOMING, 50, now + 10 * 60_000, now + hour), now - 90_000)  # announced, starts in 10 minutes
    add(_open(LIVE, 500, now - 70_000, now + hour), now - 70_000)
    # A steady order a second, then a burst: the sale's attempts spike against a baseline it measured.
    for i in range(30):
        add(_order(LIVE, i), now - 55_000 + i * 1000, user=f"l{i}")
    for i in range(90):
        add(_order(LIVE, 100 + i), now - 20_000 + i, user=f"b{i}")
    add(_order(LIVE, 999), now - 12_000, user="late")
    for i in range(3):  # 3 x 123.45: GMV has cents
        add(OrderPaid(order_id=f"{LIVE}-o{i}", sale_id=LIVE, sku=f"SKU-{LIVE}"), now - 11_000 + i, user=f"l{i}")
    orders.sort(key=lambda e: e.ts)
    engagement = [_ev(ViewerJoined(), next(n), now - 60_000 + i, f"l{i}", "live_room") for i in range(30)]
    engagement += [_ev(ViewerJoined(), next(n), now - 59_000 + i, f"o{i}", None) for i in range(3)]  # no channel
    return engagement, orders


async def seed(redis: aioredis.Redis, now: int) -> None:
    engagement, orders = room_events(now)
    metrics = WorkerMetrics(CollectorRegistry())
    sink = Sink()
    stock = StockService(StockStore(redis, metrics), metrics, sink.send)
    params = CounterParams()
    counters = CountersStore(redis, params, metrics)

    def service(topic: str) -> CountersService:
        return CountersService(counters, params, metrics, sink.send, topic)

    await service(ENGAGEMENT).handle([Record(ENGAGEMENT, 0, 0, encode_batch(engagement))])
    records = [Record(ORDERS, 0, i, encode_batch([e])) for i, e in enumerate(orders)]
    await stock.handle(records)
    await service(ORDERS).handle(records)
    decisions = [Record(DECISIONS, 0, i, value) for i, (topic, _, value) in enumerate(sink.sent) if topic == DECISIONS]
    await service(DECISIONS).handle(decisions)
    # The product title as sale.opened carries it. The stock script does not keep it in the sale hash
    # yet (a change asked of its owner, issue 15): written here to the field the read model reads.
    await redis.hset(rk.sale(LIVE), "title", LIVE_TITLE)
    await redis.hset(rk.sale(RESTOCKED), "title", RESTOCKED_TITLE)


@pytest.fixture
async def host_view(redis_server: RedisServer, redis_client: aioredis.Redis) -> AsyncIterator[str]:
    await seed(redis_client, int(time.time() * 1000))
    app = create_app(DashboardSettings(redis_url=redis_server.url, push_interval_s=0.5, key=KEY),
                     registry=CollectorRegistry())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(f"/rooms/{ROOM}?t={SIGNER.mint(ROOM, 3600)}"))
    finally:
        await server.close()


def card(sale_id: str, part: str = "card") -> str:
    return f'[data-testid="sale-{sale_id}-{part}"]'


async def test_host_view_follows_the_show(host_view: str, browser: Any, redis_client: aioredis.Redis,
                                          artifacts_dir: Path) -> None:
    errors: list[str] = []
    page = await browser.new_page(viewport=PHONE, device_scale_factor=2)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(host_view)
    await page.wait_for_selector(card(LIVE), timeout=15_000)

    # The live sale is the first card, on the first phone screen.
    first = page.locator('[data-testid="sales"] > article').first
    assert await first.get_attribute("data-testid") == f"sale-{LIVE}-card"
    box = await first.bounding_box()
    assert box is not None and box["y"] < PHONE["height"]
    assert await page.inner_text(card(LIVE, "status")) == "LIVE"
    await page.screenshot(path=str(artifacts_dir / "host-view-phone.png"))

    # Each sale in its state: restocked after a sell-out, announced for later, closed.
    assert await page.inner_text(card(RESTOCKED, "status")) == "BACK IN STOCK"
    assert "Back in stock" in await page.inner_text(card(RESTOCKED, "eta"))
    assert await page.inner_text(card(UPCOMING, "status")) == "UPCOMING"
    countdown = await page.inner_text(card(UPCOMING, "eta"))
    assert countdown.startswith("Starts in 9 m") or countdown.startswith("Starts in 10 m"), countdown
    # Pinned, then upcoming; the closed ones are collapsed under "earlier in this stream", newest first.
    main = await page.eval_on_selector_all('[data-testid="sales"] > article', "els => els.map(e => e.dataset.testid)")
    assert main == [f"sale-{s}-card" for s in (LIVE, RESTOCKED, UPCOMING)]
    earlier = page.locator('[data-testid="earlier"]')
    assert await earlier.get_attribute("open") is None  # collapsed
    assert "Earlier in this stream" in await earlier.inner_text()
    closed = await page.eval_on_selector_all('[data-testid="earlier-sales"] > article',
                                             "els => els.map(e => e.dataset.testid)")
    assert closed == [f"sale-{CLOSED_NEW}-card", f"sale-{CLOSED_OLD}-card"]
    await page.click('[data-testid="earlier"] > summary')
    assert await page.inner_text(card(CLOSED_NEW, "status")) == "CLOSED"

    # Products by name on the cards.
    assert await page.inner_text(card(LIVE, "title")) == LIVE_TITLE
    assert await page.inner_text(card(RESTOCKED, "title")) == RESTOCKED_TITLE
    assert await page.inner_text(card(UPCOMING, "title")) == f"SKU-{UPCOMING}"  # no title: the SKU

    # The spike alert names the product and shows the ratio it measured, not the configured factor.
    snap = await readmodel.room_snapshot(redis_client, ROOM, int(time.time() * 1000))
    assert snap is not None
    spikes = [s for s in snap["spikes"] if s["scope"] == "sale" and s["subject_id"] == LIVE]
    assert spikes, f"the burst raised no spike: {snap['spikes']}"
    spike = spikes[0]
    assert spike["baseline"] > 0 and spike["ratio"] == round(spike["rate"] / spike["baseline"], 2)
    assert spike["ratio"] != spike["factor"]
    alert = page.locator('[data-testid="alert-item"]', has_text=LIVE_TITLE).first
    shown = await page.evaluate("r => new Intl.NumberFormat(undefined, {maximumFractionDigits: 1}).format(r)",
                                spike["ratio"])
    assert await alert.locator(".x").inner_text() == f"×{shown}"
    assert f"SKU-{LIVE}" not in await alert.inner_text() and f"sale {LIVE}" not in await alert.inner_text()

    # Funnel: nobody clicked or carted, yet people ordered: no "0 %" after an empty stage.
    funnel = await readmodel.room_funnel(redis_client, ROOM, None, int(time.time() * 1000))
    users = {s["stage"]: s["users"] for s in funnel["stages"]}
    assert users["carters"] == 0 and users["orderers"] > 0
    assert await page.inner_text('[data-testid="funnel-orderers-rate"]') == "—"
    payers = await page.inner_text('[data-testid="funnel-payers-rate"]')
    assert payers.endswith("%") and payers != "0%", payers  # orderers exist: a real rate
    assert "counts its own distinct users" in await page.inner_text('[data-testid="funnel-note"]')

    # Events that name no channel ("other") have a button, and its numbers.
    await page.click('[data-testid="channel-other"]')
    await page.wait_for_selector('[data-testid="funnel-viewers-users"][data-value="3"]', timeout=10_000)
    assert "channel=other" in page.url
    await page.screenshot(path=str(artifacts_dir / "host-view-phone-full.png"), full_page=True)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"
    assert errors == []


async def test_gmv_reads_to_the_cent_like_every_other_amount(host_view: str, browser: Any,
                                                             redis_client: aioredis.Redis) -> None:
    page = await browser.new_page(viewport=PHONE)
    await page.goto(host_view)
    await page.wait_for_selector('[data-testid="gmv"][data-value]:not([data-value="0"])', timeout=15_000)
    gmv = int(await page.get_attribute('[data-testid="gmv"]', "data-value") or 0)
    expected = await page.evaluate(
        "v => new Intl.NumberFormat(undefined, {style: 'currency', currency: 'CNY'}).format(v / 100)", gmv)
    assert await page.inner_text('[data-testid="gmv"]') == expected
    price = await page.inner_text(card(LIVE, "card") + " .price")
    assert price.startswith(await page.evaluate(
        "v => new Intl.NumberFormat(undefined, {style: 'currency', currency: 'CNY'}).format(v / 100)", 12_345))
