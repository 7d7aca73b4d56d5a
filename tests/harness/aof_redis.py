"""A per-test redis-server with an AOF that can be killed and restarted in place (fault suite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flashsale.embedded import ManagedProcess, free_port, start_redis


@dataclass
class AofRedis:
    """redis-server with ``appendonly yes`` / ``appendfsync everysec`` on a fixed port and data dir."""

    port: int
    data_dir: Path
    log_dir: Path
    process: ManagedProcess | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        name = "redis" if self.restarts == 0 else f"redis-{self.restarts}"
        self.process = start_redis(self.port, self.data_dir, self.log_dir, appendonly=True, name=name)

    def kill(self) -> None:
        """SIGKILL redis-server: no shutdown, no final AOF rewrite."""
        assert self.process is not None
        self.process.kill()

    def restart(self) -> None:
        """Start again on the same port and data dir: it loads the AOF it wrote before."""
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(free_port(), tmp_path / "redis-data", tmp_path / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def rc(aof_redis: AofRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's AOF Redis (reconnects by itself after a restart)."""
    client = aioredis.Redis.from_url(aof_redis.url)
    yield client
    await client.aclose()
