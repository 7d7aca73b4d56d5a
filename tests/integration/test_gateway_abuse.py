"""The front door against hostile clients (review of issue 14's gateway): orders that cannot succeed
never hold a sale's units at the door, a deeply nested body is a 400, and a SIGKILLed supervisor
leaves no gateway serving the port. Real broker and redis-server; no worker, so every published
order stays in flight for the decision timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis

from flashsale.embedded import free_port, python_module
from schemas import keys
from tests.integration.test_gateway import TOKEN, GatewayFactory, gateway, order_body
from tests.integration.test_gateway_front_door import post_many

pytestmark = pytest.mark.integration
__all__ = ["gateway"]  # the fixture, imported for this module

SALE = {"sale_id": "sale-h", "sku": "sku-1", "price": "990", "per_user_limit": "1", "available": "2",
        "soldout": "0", "status": "open"}


async def test_orders_that_cannot_succeed_never_hold_the_sale(gateway: GatewayFactory, topics: dict[str, str],
                                                              redis_client: aioredis.Redis) -> None:
    """One order of qty 10,000 (over the per-user limit of 1), one at the wrong price and one for
    another SKU are all published and left in flight; the worker would reject each. They used to
    count against the 2 available units, so every honest order meanwhile was answered 429."""
    await redis_client.hset(keys.sale("sale-h"), mapping=SALE)
    async with gateway(decision_timeout_ms=1500, soldout_cache_ms=10_000) as gw:
        hostile = asyncio.ensure_future(post_many(gw, "sale-h", [
            order_body(order_id="big", user_id="x1", qty=10_000),
            order_body(order_id="cheap", user_id="x2", unit_price=1),
            order_body(order_id="other", user_id="x3", sku="sku-2")]))
        for _ in range(100):  # all three published and waiting for their decisions
            if gw.metric("flashsale_gateway_records_total") >= 1 and not hostile.done():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        honest = await post_many(gw, "sale-h", [order_body(order_id="h1", user_id="u1"),
                                                order_body(order_id="h2", user_id="u2")])
        assert [s for s, _ in honest] == [202, 202], honest  # published, not 429
        assert gw.metric("flashsale_gateway_rejected_total", reason="units_in_flight") == 0
        await hostile
        assert gw.state.inflight.total() == 0


async def test_a_closed_sale_is_never_answered_retry(gateway: GatewayFactory, topics: dict[str, str],
                                                     redis_client: aioredis.Redis) -> None:
    """A closed sale has 0 available units and no sold-out flag (only an open sale sells out): each
    order goes to the worker (which answers sale_not_active), never 429 "retry", which invites a storm."""
    await redis_client.hset(keys.sale("sale-h"), mapping={**SALE, "status": "closed", "available": "0"})
    async with gateway(decision_timeout_ms=800, soldout_cache_ms=10_000) as gw:
        answers = await post_many(gw, "sale-h", [order_body(order_id=f"c{i}", user_id=f"u{i}") for i in range(4)])
        assert [s for s, _ in answers] == [202] * 4, answers


async def test_a_deeply_nested_order_body_is_a_400_not_a_500(gateway: GatewayFactory, topics: dict[str, str],
                                                             redis_client: aioredis.Redis) -> None:
    await redis_client.hset(keys.sale("sale-h"), mapping=SALE)
    body = b'{"order_id":"o1","user_id":"u1","x":' + b"[" * 900 + b"]" * 900 + b"}"
    async with gateway() as gw:
        status, answer, _ = await gw.post("/v1/sales/sale-h/orders", data=body)
    assert status == 400, answer
    assert any(e["field"] == "x" for e in answer["errors"])


async def test_a_killed_supervisor_takes_its_gateways_along(worker_env: dict[str, str], topics: dict[str, str],
                                                           tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **worker_env, "FLASHSALE_GATEWAY_PORT": str(port), "FLASHSALE_GATEWAY_TOKEN": TOKEN,
           "FLASHSALE_AUTO_CREATE_TOPICS": "false"}
    proc = python_module("producers.gateway", ["--processes", "2"], tmp_path, "gateway", env=env)
    children: list[Any] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                assert proc.alive(), proc.log_path.read_text()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway never served")
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        os.kill(proc.pid, signal.SIGKILL)  # no chance to stop them
        await asyncio.to_thread(proc.popen.wait, 10)
        for _ in range(150):
            alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
            if not alive:
                break
            await asyncio.sleep(0.1)
        assert not alive, f"gateway processes {[c.pid for c in alive]} outlived their supervisor"
    finally:
        for child in children:  # by PID, whatever happened
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.stop()
