"""A payment through the gateway keeps its order's attribution: the distributor of a share-link order
is credited its GMV and the payer counts in the order's channel (real broker, worker and redis-server).

The gateway's pay command used to publish every order.paid with channel "other" and no referrer, and
the counters credit a payment to its own envelope: a distributor's GMV stayed 0 and every payer of the
funnel by channel landed in "other"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
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


async def test_a_refund_through_the_events_endpoint_needs_payments_and_settles_the_order(
        gateway: GatewayFactory, broker: Broker, topics: dict[str, str], worker: Any,
        redis_client: aioredis.Redis) -> None:
    """order.refunded goes through POST /v1/events with a payments token only; once the worker refunded
    the order, paying or cancelling it again is refused with its own reason (it read "not_accepted")."""
    now = int(time.time() * 1000)
    refund = {"type": "order.refunded", "v": 1, "event_id": "refund-rf-1", "ts": now, "room_id": "room-1",
              "user_id": "buyer-2", "data": {"order_id": "rf-1", "sale_id": "sale-r", "sku": "sku-1"}}
    async with gateway(tokens=SCOPED, decision_timeout_ms=20_000) as gw:
        assert (await gw.post("/v1/sales/sale-r/open", open_body(now), token=CONTROL))[0] == 200
        status, body, _ = await gw.post("/v1/sales/sale-r/orders", order_body(order_id="rf-1", user_id="buyer-2"))
        assert status == 200 and body["outcome"] == "accepted", body
        assert (await gw.post("/v1/sales/sale-r/orders/rf-1/pay", {}, token=PAYMENTS))[1]["state"] == "sold"

        status, body, _ = await gw.post("/v1/events", refund)  # an orders token: refused, nothing published
        assert status == 403, body
        status, body, _ = await gw.post("/v1/events", refund, token=PAYMENTS)
        assert status == 202, body
        state = None
        for _ in range(200):
            raw = await redis_client.hget(keys.sale_orders("sale-r"), "rf-1")
            state = orjson.loads(raw)["s"] if raw else None
            if state == "refunded":
                break
            await asyncio.sleep(0.05)
        assert state == "refunded"
        status, body, _ = await gw.post("/v1/sales/sale-r/orders/rf-1/pay", {}, token=PAYMENTS)
        assert (status, body["reason"], body["state"]) == (409, "order_refunded", "refunded"), body
        status, body, _ = await gw.post("/v1/sales/sale-r/orders/rf-1/cancel", {"user_id": "buyer-2"})
        assert (status, body["reason"]) == (409, "order_refunded"), body
    sale = await redis_client.hgetall(keys.sale("sale-r"))
    n = {k: int(sale[k.encode()]) for k in ("allotted", "available", "reserved", "sold", "refunded")}
    assert n["sold"] == 0 and n["refunded"] == 1
    assert n["allotted"] == n["available"] + n["reserved"] + n["sold"] + n["refunded"]
