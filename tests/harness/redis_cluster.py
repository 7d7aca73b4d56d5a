"""A 3-master Redis Cluster on loopback for the scale-out tests (one per session: every test's client
starts on flushed primaries with empty script caches), stopped by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from redis.asyncio.cluster import RedisCluster

from flashsale.embedded import ManagedProcess, free_port, start_redis_cluster


@dataclass(frozen=True)
class RedisClusterHandle:
    ports: list[int]
    processes: list[ManagedProcess]

    @property
    def url(self) -> str:
        """One node's URL: cluster clients discover the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    ports = [free_port() for _ in range(3)]
    base = tmp_path_factory.mktemp("redis-cluster")
    procs = start_redis_cluster(ports, base, base)
    yield RedisClusterHandle(ports, procs)
    for proc in procs:
        proc.stop()


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterHandle) -> AsyncIterator[RedisCluster]:
    """A RedisCluster client on flushed primaries and empty script caches: every test starts empty."""
    client = RedisCluster.from_url(redis_cluster.url)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    await client.script_flush()  # redis-py sends SCRIPT FLUSH to every primary
    yield client
    await client.aclose()
