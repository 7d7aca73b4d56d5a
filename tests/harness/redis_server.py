"""A real redis-server on a free loopback port (one per session) and a client on a flushed database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flashsale.embedded import ManagedProcess, free_port, start_redis


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    process: ManagedProcess
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = start_redis(port, data, data)
    yield RedisServer("127.0.0.1", port, proc, data)
    proc.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client on a flushed database: every test starts from empty Redis."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()
