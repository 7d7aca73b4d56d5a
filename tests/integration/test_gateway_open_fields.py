"""POST /v1/sales/{sale_id}/open takes every sale.opened field of the contract: the product's title
and image_url (added to the contract in issue 15) were refused as unknown fields, because the
endpoint kept its own list of fields; it now takes them from SaleOpened itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from flashsale.embedded import free_port
from producers.gateway.app import create_app, make_runner
from producers.gateway.routes import STATE
from producers.gateway.settings import GatewaySettings
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.redis_server import RedisServer
from tests.harness.workers import WorkerHandle

pytestmark = pytest.mark.integration

CONTROL = "control-token-0123456789"


async def test_open_publishes_the_products_title_and_image(broker: Broker, redis_server: RedisServer,
                                                           topic_prefix: str, topics: dict[str, str],
                                                           worker: WorkerHandle) -> None:
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), redis_url=redis_server.url, broker_url=broker.url,
                               topic_prefix=topic_prefix, timeout_ms=3000, partitions=4, auto_create_topics=False,
                               tokens=(f"{CONTROL}=control",), decision_timeout_ms=20_000)
    app = create_app(settings, CollectorRegistry())
    runner = make_runner(app)
    await runner.setup()
    now = int(time.time() * 1000)
    body: dict[str, Any] = {"room_id": "room-1", "sku": "sku-1", "price": 990, "allotment": 5, "per_user_limit": 1,
                            "starts_at": now - 1000, "ends_at": now + 600_000, "title": "Ceramic teapot, 1 l",
                            "image_url": "https://shop.example/img/teapot.jpg"}
    try:
        await web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=1).start()
        await asyncio.wait_for(app[STATE].connected.wait(), 15)
        async with aiohttp.ClientSession() as session, session.post(
                f"http://{settings.host}:{settings.port}/v1/sales/s1/open", data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {CONTROL}", "Content-Type": "application/json"}) as resp:
            answer = orjson.loads(await resp.read())
            assert resp.status == 200, answer
    finally:
        await runner.cleanup()
    assert answer["status"] == "applied" and answer["sale"]["allotted"] == 5
    opened = await read_topic(broker.bootstrap, topics["orders"], lambda items: bool(items), timeout=20)
    assert [(e["type"], e["data"].get("title"), e["data"].get("image_url")) for e in opened] == [
        ("sale.opened", body["title"], body["image_url"])]
