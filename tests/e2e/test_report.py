"""``flashsale report``: the post-show recap, built by the CLI from a real redis-server and a real broker,
rendered in headless Chromium, and checked against Redis.

The room is built by the worker's own services (stock and counters, real Lua, no worker process), as
the host-view test does; the engagement events also go to the engagement topic of a real Tansu broker,
which is where the recap's viewers-over-time series comes from.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from consumers import readmodel
from flashsale.narrate import money
from flashsale.report import collect
from schemas.codec import encode_batch
from schemas.events import Event, OrderPaid, OrderPlaced, Payload, SaleOpened, ViewerJoined, make_event
from schemas.topics import DECISIONS, ENGAGEMENT, ORDERS
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.counters.store import CountersStore
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import StockStore
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events
from tests.harness.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ROOM = "recap-room"
MIN = 60_000


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def stream(now: int) -> tuple[list[Event], list[Event]]:
    """(engagement, orders): a 6-minute stream with two sales; one sells out, one sells half."""
    n = iter(range(1_000_000))
    t0 = now - now % MIN - 6 * MIN

    def ev(payload: Payload, ts: int, user: str = "host", channel: str = "live_room", ref: str | None = None
           ) -> Event:
        extra: dict[str, Any] = {"referrer_id": ref} if ref else {}
        return make_event(payload, event_id=f"rc-{next(n)}", ts=ts, room_id=ROOM, user_id=user, channel=channel,
                          **extra)

    orders = [ev(SaleOpened(sale_id="scarf", sku="SKU-1", price=9_990, allotment=4, per_user_limit=1,
                            starts_at=t0, ends_at=t0 + 3_600_000, reservation_ttl_s=3600, title="Silk scarf"), t0),
              ev(SaleOpened(sale_id="tea", sku="SKU-2", price=2_550, allotment=10, per_user_limit=2,
                            starts_at=t0, ends_at=t0 + 3_600_000, reservation_ttl_s=3600), t0)]
    for i in range(6):  # 6 attempts for 4 scarves in minute 1: sold out
        ch, ref = ("share_link", "dist-7") if i % 2 else ("live_room", None)
        orders.append(ev(OrderPlaced(order_id=f"s{i}", sale_id="scarf", sku="SKU-1", qty=1, unit_price=9_990),
                         t0 + MIN + i * 100, f"u{i}", ch, ref))
    for i in range(5):  # tea in minute 3
        orders.append(ev(OrderPlaced(order_id=f"t{i}", sale_id="tea", sku="SKU-2", qty=1, unit_price=2_550),
                         t0 + 3 * MIN + i * 100, f"u{i}"))
    for i in range(4):  # scarves paid in minute 2, teas in minute 4
        orders.append(ev(OrderPaid(order_id=f"s{i}", sale_id="scarf", sku="SKU-1"), t0 + 2 * MIN + i, f"u{i}"))
    for i in range(3):
        orders.append(ev(OrderPaid(order_id=f"t{i}", sale_id="tea", sku="SKU-2"), t0 + 4 * MIN + i, f"u{i}"))
    # viewers: 3 in minute 0, 8 in minute 1 (the peak), 2 in minute 5
    engagement = [ev(ViewerJoined(), t0 + i, f"v{i}") for i in range(3)]
    engagement += [ev(ViewerJoined(), t0 + MIN + i, f"w{i}") for i in range(8)]
    engagement += [ev(ViewerJoined(), t0 + 5 * MIN + i, f"x{i}") for i in range(2)]
    return engagement, orders


async def seed(redis: aioredis.Redis, engagement: list[Event], orders: list[Event]) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    sink = Sink()
    stock = StockService(StockStore(redis, metrics), metrics, sink.send)
    params = CounterParams()
    counters = CountersStore(redis, params, metrics)

    def service(topic: str) -> CountersService:
        return CountersService(counters, params, metrics, sink.send, topic)

    await service(ENGAGEMENT).handle([Record(ENGAGEMENT, 0, 0, encode_batch(engagement))])
    # each record stamped with its event's time: the pipeline's clock (a trusted backfill)
    records = [Record(ORDERS, 0, i, encode_batch([e]), timestamp_ms=e.ts) for i, e in enumerate(orders)]
    await stock.handle(records)
    await service(ORDERS).handle(records)
    decisions = [Record(DECISIONS, 0, i, value) for i, (topic, _, value) in enumerate(sink.sent) if topic == DECISIONS]
    await service(DECISIONS).handle(decisions)


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        yield b
        await b.close()


async def test_report_builds_a_recap_that_matches_redis(redis_server: RedisServer, redis_client: aioredis.Redis,
                                                        broker: Broker, topics: dict[str, str], topic_prefix: str,
                                                        browser: Any, tmp_path: Path, artifacts_dir: Path) -> None:
    now = int(time.time() * 1000)
    engagement, orders = stream(now)
    await seed(redis_client, engagement, orders)
    await produce_events(broker.bootstrap, topic_prefix, engagement)

    # What Redis says, through the dashboard's read model, and the recap's series from the order records.
    snap = await readmodel.room_snapshot(redis_client, ROOM, now)
    assert snap is not None
    assert snap["gmv"] == 4 * 9_990 + 3 * 2_550
    recap = await collect(redis_client, ROOM, now)
    assert recap.gmv_from_orders == snap["gmv"]  # the GMV chart adds up to the room's GMV
    assert sum(recap.orders_per_minute.values()) == 11

    out = tmp_path / "recap.html"
    env = {**os.environ, "FLASHSALE_ENV_FILE": os.devnull, "FLASHSALE_REDIS_URL": redis_server.url,
           "FLASHSALE_BROKER_URL": broker.url, "FLASHSALE_TOPIC_PREFIX": topic_prefix}
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "flashsale", "report", "--room", ROOM,
                                                    "--out", str(out)], env=env, capture_output=True, text=True,
                                   timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (2 sales, GMV {money(snap['gmv'])})" in proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained

    page = await browser.new_page(viewport={"width": 794, "height": 1123})
    await page.goto(out.as_uri())
    assert await page.inner_text('[data-testid="kpi-gmv"] b') == money(snap["gmv"])
    assert await page.inner_text('[data-testid="kpi-units"] b') == "7"
    # charts: GMV from minute 2 to minute 4 (3 points), viewers minute 0..5 (6 points, peak 8), orders 1..3
    assert await page.get_attribute('[data-testid="chart-gmv"]', "data-points") == "3"
    assert await page.get_attribute('[data-testid="chart-viewers"]', "data-points") == "6"
    assert "peak 8 at" in await page.text_content('[data-testid="chart-viewers"]')
    assert await page.get_attribute('[data-testid="chart-orders"]', "data-points") == "3"
    assert f"peak {money(snap['gmv'])} at" in await page.text_content('[data-testid="chart-gmv"]')
    scarf = await page.inner_text('[data-testid="sale-scarf"]')
    assert "Silk scarf" in scarf and "4 / 4" in scarf and "100.0 %" in scarf and "60.3 s" in scarf
    tea = await page.inner_text('[data-testid="sale-tea"]')
    assert "3 / 10" in tea and "30.0 %" in tea and "—" in tea  # never sold out
    assert "dist-7" in await page.inner_text('[data-testid="distributors"]')
    share = await page.inner_text('[data-testid="funnel-share_link"]')
    assert share.split("\t")[0].strip() == "share link"
    await page.pdf(path=str(artifacts_dir / "recap.pdf"))  # printable
    await page.screenshot(path=str(artifacts_dir / "recap.png"), full_page=True)
    await page.close()


def test_report_of_an_unknown_room_is_a_clear_error(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {**os.environ, "FLASHSALE_ENV_FILE": os.devnull, "FLASHSALE_REDIS_URL": redis_server.url}
    proc = subprocess.run([sys.executable, "-m", "flashsale", "report", "--room", "nobody", "--no-log",
                           "--out", str(tmp_path / "x.html")], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2
    assert "room 'nobody' is not known to Redis" in proc.stderr
    assert not (tmp_path / "x.html").exists()
