"""The worker is not ready while its Redis URL names a read-only replica (real redis-servers: a primary
and a replica of it). PING alone answered, so /readyz said 200 while every write was refused READONLY."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from faust.types import TP

from flashsale.embedded import ManagedProcess, free_port, start_redis
from tests.harness.redis_server import RedisServer
from tests.harness.worker_web import web_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def replica(redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ManagedProcess]]:
    port = free_port()
    data = tmp_path_factory.mktemp("replica")
    proc = start_redis(port, data, data)
    try:
        yield port, proc
    finally:
        proc.stop()


async def test_readyz_is_503_on_a_replica_and_200_once_it_is_promoted(replica: tuple[int, ManagedProcess],
                                                                      redis_server: RedisServer) -> None:
    port, _ = replica
    admin = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        await admin.execute_command("REPLICAOF", redis_server.host, str(redis_server.port))
        for _ in range(100):  # the replica has its role at once; wait for the link only to be sure
            if (await admin.execute_command("ROLE"))[0] == b"slave":
                break
            await asyncio.sleep(0.05)
        async for w in web_worker(f"redis://127.0.0.1:{port}/0"):
            await w.pipeline.app.on_partitions_assigned.send({TP("unit.orders", 0)})
            resp = await w.client.get("/readyz")
            body = await resp.json()
            assert resp.status == 503, body
            assert body["redis"] == "redis is a read-only replica (ROLE slave): writes are refused"
            assert "read-only replica" in body["reason"]

            await admin.execute_command("REPLICAOF", "NO", "ONE")  # promoted: writes are accepted again
            resp = await w.client.get("/readyz")
            assert resp.status == 200, await resp.json()
            assert (await resp.json())["redis"] == "ok"
    finally:
        await admin.aclose()
