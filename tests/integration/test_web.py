"""streams.web's /readyz with the real redis-server, on a Faust app not started (the rest: unit/streams/test_web.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faust.types import TP

from tests.harness.redis_server import RedisServer
from tests.harness.worker_web import WebWorker, sample, web_worker

pytestmark = pytest.mark.integration


@pytest.fixture
async def worker(redis_server: RedisServer) -> AsyncIterator[WebWorker]:
    async for w in web_worker(redis_server.url):
        yield w


async def test_readyz_turns_200_once_the_group_is_joined(worker: WebWorker) -> None:
    resp = await worker.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["redis"] == "ok"

    tps = {TP("unit.orders", 0), TP("unit.orders", 3), TP("unit-web-__assignor-__leader", 0)}
    await worker.pipeline.app.on_partitions_assigned.send(tps)
    resp = await worker.client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body == {"ready": True, "group_joined": True, "partitions": 2, "rebalancing": False, "redis": "ok"}
    assert sample(worker.pipeline, "flashsale_worker_ready") == 1.0
    assert sample(worker.pipeline, "flashsale_redis_call_seconds_count", {"op": "ping"}) == 2.0


async def test_an_empty_assignment_is_still_ready(worker: WebWorker) -> None:
    # More workers than partitions: the extra ones are joined standbys and must not block a rollout.
    await worker.pipeline.app.on_partitions_assigned.send(set())
    resp = await worker.client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["partitions"] == 0
