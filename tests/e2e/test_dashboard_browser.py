"""The dashboard in headless Chromium while a real worker processes a simulated sale.

Broker and Redis are the session fixtures; the worker, the dashboard and the simulator run as
processes; the page is driven by Playwright on Debian's chromium (never a downloaded browser).
The page is opened the way a host opens it: with a signed link (room-scoped, or a host link).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumers import readmodel
from consumers.access import Signer
from flashsale.embedded import ManagedProcess, free_port, python_module
from schemas import keys as rk
from tests.harness.workers import WorkerHandle

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOM = "room-1"  # the simulator's first room
SOLD_OUT_WAIT_MS = 120_000
SETTLE_S = 60.0
KEY = "e2e-dashboard-key-0123456789abcdef"
SIGNER = Signer(KEY.encode())


def wait_http(url: str, proc: ManagedProcess, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.alive(), f"{proc.name} exited: {proc.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} not ready at {url}: {proc.log_path.read_text()[-3000:]}")


class Dashboard:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "FLASHSALE_DASHBOARD_PORT": str(self.port), "FLASHSALE_DASHBOARD_KEY": KEY}
        self.log_dir = log_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = self.start()

    def room_link(self, room: str) -> str:
        return f"{self.url}/rooms/{room}?t={SIGNER.mint(room, 3600)}"

    def host_link(self) -> str:
        return f"{self.url}/?t={SIGNER.mint(None, 3600)}"

    def start(self) -> ManagedProcess:
        proc = python_module("consumers.dashboard", [], self.log_dir, "dashboard", env=self.env)
        wait_http(f"{self.url}/readyz", proc, 30)
        return proc


@pytest.fixture
def dashboard(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Dashboard]:
    d = Dashboard(worker_env, tmp_path)
    yield d
    d.proc.stop()


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


async def numbers(page: Any, ids: list[str]) -> dict[str, str | None]:
    return {i: await page.get_attribute(f'[data-testid="{i}"]', "data-value") for i in ids}


async def sale_hash(redis: aioredis.Redis, sale_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(rk.sale(sale_id))).items()}


async def test_dashboard_follows_a_simulated_sale(worker: WorkerHandle, dashboard: Dashboard, browser: Any,
                                                 redis_client: aioredis.Redis, worker_env: dict[str, str],
                                                 tmp_path: Path, artifacts_dir: Path) -> None:
    errors: list[str] = []  # uncaught exceptions and console errors (CSP violations, 404s, ...)
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    console = {"watch": True}  # off while the server is stopped on purpose (refused connections log errors)
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and console["watch"] else None)

    # Before any event: the room shows the empty state, not an error page.
    await page.goto(dashboard.room_link(ROOM))
    await page.wait_for_selector('[data-testid="empty-state"]', state="visible", timeout=15_000)
    assert f"No live data for room {ROOM} yet" in await page.inner_text('[data-testid="empty-state"]')

    run_id = f"e2e{uuid.uuid4().hex[:6]}"
    sale_id = f"{run_id}-r1-s1"
    sim = python_module("producers.simulator", [
        "--rooms", "1", "--viewers", "300", "--duration", "20", "--sales", "1", "--allotment", "40",
        "--attempts-factor", "6", "--first-sale-at", "3", "--sale-window", "12", "--ttl", "6",
        "--run-id", run_id, "--json"], tmp_path, "simulator", env={**os.environ, **worker_env})
    try:
        # The page picks the room up by itself and shows the sale selling out.
        status = f'[data-testid="sale-{sale_id}-status"]'
        await page.wait_for_selector(f'{status}[data-value="sold_out"]', timeout=SOLD_OUT_WAIT_MS)
        assert await page.inner_text(status) == "SOLD OUT"
        assert "Sold out at" in await page.inner_text(f'[data-testid="sale-{sale_id}-eta"]')
        assert await page.get_attribute('[data-testid="conn-status"]', "data-state") == "live"

        async with asyncio.timeout(SETTLE_S):
            while sim.alive():  # noqa: ASYNC110 - waiting on a child process, bounded by the timeout
                await asyncio.sleep(0.5)
        assert sim.popen.returncode == 0, sim.log_path.read_text()[-3000:]
    finally:
        sim.stop()

    # Once the pipeline settles, every number on the page equals Redis.
    fields = ["available", "reserved", "sold", "allotted", "attempts", "accepted"]
    ids = [f"sale-{sale_id}-{f}" for f in fields] + ["viewers-online", "viewers-peak"]
    page_now: dict[str, str | None] = {}
    expected: dict[str, str | None] = {}
    async with asyncio.timeout(SETTLE_S):
        while True:
            state = await sale_hash(redis_client, sale_id)
            snap = await readmodel.room_snapshot(redis_client, ROOM, int(time.time() * 1000))
            assert snap is not None
            expected = {f"sale-{sale_id}-{f}": state[f] for f in fields}
            expected["viewers-online"] = str(snap["viewers_online"])
            expected["viewers-peak"] = str(snap["viewers_peak"])
            await page.wait_for_timeout(1500)  # at least one push after the Redis read
            page_now = await numbers(page, ids)
            again = await sale_hash(redis_client, sale_id)
            if page_now == expected and again == state:
                break
    assert page_now == expected
    a, r, s = (int(expected[f"sale-{sale_id}-{f}"] or 0) for f in ("available", "reserved", "sold"))
    assert a + r + s == 40 and s > 0  # abandoned reservations (TTL 6 s) go back to available
    # The visible text is the same number, formatted.
    # (The sale's window has ended by now, so its card sits under the collapsed "earlier" section.)
    shown = await page.text_content(f'[data-testid="sale-{sale_id}-attempts"]') or ""
    assert shown.replace(",", "").replace("\u202f", "").replace(".", "") == expected[f"sale-{sale_id}-attempts"]
    age = await page.get_attribute('[data-testid="data-age"]', "data-value")
    assert age not in (None, "")

    await page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    phone = await browser.new_page(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    phone.on("pageerror", lambda exc: errors.append(str(exc)))
    phone.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and console["watch"] else None)
    host = dashboard.host_link()
    await phone.goto(host)  # a host link, no room in the URL: the most recently active one
    await phone.wait_for_selector(f'[data-testid="sale-{sale_id}-card"]', state="attached", timeout=15_000)
    assert phone.url == host.replace("/?t=", f"/rooms/{ROOM}?t=")
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways on a phone ({width}px)"
    await phone.screenshot(path=str(artifacts_dir / "dashboard-phone.png"), full_page=True)

    # An unknown room: a clear empty state, never an error page.
    await phone.goto(host.replace("/?t=", "/rooms/no-such-room?t="))
    await phone.wait_for_selector('[data-testid="empty-state"]', state="visible", timeout=15_000)
    assert "No live data for room no-such-room yet" in await phone.inner_text('[data-testid="empty-state"]')
    await phone.screenshot(path=str(artifacts_dir / "dashboard-empty.png"))

    # Without a link, with an expired one or with another room's, the browser gets a page that says what to do.
    expired = Signer(KEY.encode(), clock=lambda: time.time() - 7200).mint(ROOM, 3600)
    for url, status in [(f"{dashboard.url}/rooms/{ROOM}", "401"),
                        (f"{dashboard.url}/rooms/{ROOM}?t={expired}", "401"),
                        (f"{dashboard.url}/rooms/room-2?t={SIGNER.mint(ROOM, 3600)}", "403")]:
        console["watch"] = False  # the refused document itself logs a console error
        await phone.goto(url)
        refused = phone.locator('[data-testid="access-refused"]')
        assert await refused.get_attribute("data-status") == status
        assert "flashsale dashboard-link" in await refused.inner_text()
    console["watch"] = True

    assert errors == []

    # Graceful shutdown ends the streams; the page says so and reconnects to the restarted server.
    console["watch"] = False
    assert dashboard.proc.stop(timeout=10) == 0
    await page.wait_for_selector('[data-testid="conn-status"]:not([data-state="live"])', timeout=15_000)
    dashboard.proc = dashboard.start()
    await page.wait_for_selector('[data-testid="conn-status"][data-state="live"]', timeout=30_000)
    # The page shows Redis again (an abandoned reservation may have expired meanwhile: compare with now).
    shown_available, in_redis = None, None
    for _ in range(20):  # bounded: ~20 s
        in_redis = (await sale_hash(redis_client, sale_id)).get("available")
        shown_available = await page.get_attribute(f'[data-testid="sale-{sale_id}-available"]', "data-value")
        if shown_available == in_redis:
            break
        await page.wait_for_timeout(1000)
    assert shown_available == in_redis
    assert errors == []


class ChangingSource:
    """A read model whose every answer differs from the last: sales come and go, spikes keep
    arriving, the leaderboard reshuffles. It exercises every DOM path of the page far faster than a
    real stream could (this test is about the page's memory, not the data)."""

    def __init__(self) -> None:
        self.tick = 0

    async def snapshot(self, room_id: str, now_ms: int) -> dict[str, Any] | None:
        self.tick += 1
        t = self.tick
        sec = now_ms // 1000 * 1000
        sales = []
        for k in range(t // 40, t // 40 + 3):  # a new sale every 40 ticks, an old one leaves
            available = max(0, 100 - (t % 120))
            sales.append({
                "sale_id": f"s{k}", "sku": f"sku-{k}", "room_id": room_id, "status": "open", "price": 990 + k,
                "allotted": 100, "available": available, "reserved": (100 - available) // 3,
                "sold": 100 - available - (100 - available) // 3, "attempts": 10 * t, "accepted": t,
                "rejected": {"sold_out": t, "limit_exceeded": k}, "attempts_per_s": {"1s": t % 7, "10s": t % 11},
                "opened_at": now_ms - 60_000, "sold_out_at": now_ms - 1000 if available == 0 else None,
                "seconds_to_sell_out": 59.0 if available == 0 else None, "sell_through": 0.5,
                "projected_sell_out_at": now_ms + 30_000 if available else None})
        return {
            "room_id": room_id, "viewers_online": 1000 + t % 97, "viewers_peak": 2000 + t, "likes_per_s": t % 50,
            "comments_per_s": 1.5, "shares": t, "cart_adds_per_s": 2, "orders_per_s": t % 13, "gmv": 1000 * t,
            "gmv_per_1000_viewers": 12.5,
            "series": {name: [[sec - (299 - i) * 1000, (i * t) % 37] for i in range(300)]
                       for name in ("viewers", "likes_per_s", "orders_per_s")},
            "sales": sales,
            "leaderboard": [{"referrer_id": f"d{(i * t) % 17}", "orders": 20 - i, "gmv": 1000 * (20 - i)}
                            for i in range(10)],
            "spikes": [{"ts": now_ms - 1000 * j, "scope": "room", "subject_id": room_id, "metric": "likes_per_s",
                        "rate": 50.0, "baseline": 10.0, "factor": 5.0} for j in range(t // 25 % 20, 20)][:20],
            "as_of_ms": now_ms - 300,
        }

    async def funnel(self, room_id: str, channel: str | None, now_ms: int) -> dict[str, Any] | None:
        users = [1000 + self.tick % 50, 500, 200, 100, 50]
        return {"room_id": room_id, "channel": channel, "overall_rate": 0.05, "orders": self.tick, "aov": 990,
                "stages": [{"stage": s, "users": u, "rate_from_prev": None if i == 0 else u / users[i - 1]}
                           for i, (s, u) in enumerate(zip(("viewers", "clickers", "carters", "orderers", "payers"),
                                                          users, strict=True))]}

    async def rooms(self, now_ms: int) -> list[dict[str, Any]]:
        return [{"room_id": f"room-{i}", "last_event_ms": now_ms, "viewers_online": i} for i in range(5)]


async def page_metrics(page: Any, cdp: Any, samples: int = 3) -> dict[str, float]:
    """The smallest of a few post-GC readings (Blink collects detached nodes lazily, so a single
    "Nodes" reading swings by hundreds); plus the elements attached to the document."""
    out: dict[str, float] = {}
    for _ in range(samples):
        await cdp.send("HeapProfiler.collectGarbage")
        metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
        metrics["Elements"] = await page.evaluate("document.getElementsByTagName('*').length")
        metrics["Toasts"] = await page.evaluate("document.getElementById('toasts').childElementCount")
        out = {k: min(v, out.get(k, v)) for k, v in metrics.items()}
        await page.wait_for_timeout(1_000)
    return out


@pytest.mark.slow
async def test_page_does_not_grow_over_many_pushes(redis_server: Any, browser: Any) -> None:
    """About 1,400 pushes (23 minutes of a real room at one push a second) with 20 channel switches,
    each a new EventSource: the page's DOM nodes, listeners and JS heap end where they started."""
    from aiohttp.test_utils import TestServer
    from prometheus_client import CollectorRegistry

    from consumers.dashboard.live import LiveHub
    from consumers.dashboard.server import HUB, METRICS, create_app
    from consumers.dashboard.settings import DashboardSettings

    app = create_app(DashboardSettings(redis_url=redis_server.url, push_interval_s=0.05, key=KEY),
                     registry=CollectorRegistry())
    app[HUB] = LiveHub(ChangingSource(), app[METRICS], interval_s=0.05, idle_grace_s=0.0)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    errors: list[str] = []
    try:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        await page.goto(str(server.make_url(f"/rooms/room-1?t={SIGNER.mint('room-1', 3600)}")))
        await page.wait_for_selector('[data-testid="conn-status"][data-state="live"]', timeout=15_000)
        channels = ["all", "live_room", "community_group", "mini_program", "share_link", "other"]
        await page.wait_for_timeout(10_000)  # warm up: every pool and card created, JIT settled
        base = await page_metrics(page, cdp)
        for i in range(20):  # 50 pushes per channel: each sees a sale arrive and one leave (every 40 ticks)
            await page.click(f'[data-testid="channel-{channels[i % len(channels)]}"]')
            await page.wait_for_timeout(2_500)
        await page.click('[data-testid="channel-all"]')
        await page.wait_for_timeout(7_000)  # let the last toasts expire
        end = await page_metrics(page, cdp)
        pushes = app[METRICS].pushes._value.get()
        assert await page.get_attribute('[data-testid="conn-status"]', "data-state") == "live"
    finally:
        await server.close()
    watched = ("Elements", "Toasts", "Nodes", "JSEventListeners", "JSHeapUsedSize", "Documents")
    print("pushes", pushes, {k: (base[k], end[k]) for k in watched})
    assert errors == []
    assert pushes >= 1000
    # Attached elements: the same, give or take the toasts on screen (at most 4, 2 elements each).
    assert end["Elements"] - 2 * end["Toasts"] == base["Elements"] - 2 * base["Toasts"]
    assert end["JSEventListeners"] <= base["JSEventListeners"]
    assert end["Documents"] <= base["Documents"]
    # Leaked detached cards (60 nodes each, one every 40 pushes) would add thousands.
    assert end["Nodes"] <= base["Nodes"] * 1.25
    assert end["JSHeapUsedSize"] <= base["JSHeapUsedSize"] * 1.5 + 2_000_000


async def test_an_expiring_link_tells_the_viewer_instead_of_reconnecting(redis_server: Any, browser: Any) -> None:
    """The stream ends with its token; the page asks /api/access, learns why and stops retrying."""
    from aiohttp.test_utils import TestServer
    from prometheus_client import CollectorRegistry

    from consumers.dashboard.live import LiveHub
    from consumers.dashboard.server import HUB, METRICS, create_app
    from consumers.dashboard.settings import DashboardSettings

    app = create_app(DashboardSettings(redis_url=redis_server.url, push_interval_s=0.2, key=KEY),
                     registry=CollectorRegistry())
    app[HUB] = LiveHub(ChangingSource(), app[METRICS], interval_s=0.2, idle_grace_s=0.0)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        page = await browser.new_page()
        await page.goto(str(server.make_url(f"/rooms/room-1?t={SIGNER.mint('room-1', 4)}")))
        await page.wait_for_selector('[data-testid="conn-status"][data-state="live"]', timeout=15_000)
        await page.wait_for_selector('[data-testid="empty-state"]', state="visible", timeout=20_000)
        assert "token expired" in await page.inner_text('[data-testid="empty-state"]')
        assert await page.inner_text('[data-testid="conn-status"]') == "Link expired"
    finally:
        await server.close()
