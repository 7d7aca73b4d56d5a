"""A payment through the gateway keeps its order's attribution: the distributor of a share-link order
is credited its GMV and the payer counts in the order's channel (real broker, worker and redis-server).

The gateway's pay command used to publish every order.paid with channel "other" and no referrer, and
the counters credit a payment to its own envelope: a distributor's GMV stayed 0 and every payer of the
funnel by channel landed in "other"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumers import readmodel
from schemas import keys
from tests.harness.broker import Broker
from tests.integration.test_gateway import CONTROL, PAYMENTS, SCOPED, GatewayFactory, gateway, open_body, order_body

pytestmark = pytest.mark.integration
__all__ = ["gateway"]  # the fixture, imported for this module


async def test_paying_a_share_link_order_credits_its_distributor_and_channel(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], worker: Any,
        redis_client: aioredis.Redis) -> None:
    now = int(time.time() * 1000)
    async with gateway(tokens=SCOPED, decision_timeout_ms=20_000) as gw:
        status, body, _ = await gw.post("/v1/sales/sale-a/open", open_body(now), token=CONTROL)
        assert status == 200, body
        status, body, _ = await gw.post("/v1/sales/sale-a/orders", order_body(
            order_id="sh-1", user_id="buyer-1", channel="share_link", referrer_id="dist-9"))
        assert status == 200 and body["outcome"] == "accepted", body
        status, body, _ = await gw.post("/v1/sales/sale-a/orders/sh-1/pay", {}, token=PAYMENTS)
        assert (status, body["state"]) == (200, "sold"), body

    gmv: float | None = None
    for _ in range(200):  # the counters agent applies the payment shortly after the stock core
        gmv = await redis_client.zscore(keys.room_ref_gmv("room-1"), "dist-9")
        if gmv:
            break
        await asyncio.sleep(0.05)
    assert gmv == 990
    funnel = await readmodel.room_funnel(redis_client, "room-1", "share_link", now)
    assert [r["users"] for r in funnel["stages"]][-1] == 1  # the payer, in the order's channel
    assert funnel["gmv"] == 990
    other = await readmodel.room_funnel(redis_client, "room-1", "other", now)
    assert other["gmv"] == 0 and [r["users"] for r in other["stages"]][-1] == 0
