"""Session fixtures: a real Tansu broker and a real redis-server on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flashsale.embedded import ManagedProcess, free_port, start_redis, start_tansu
from kernel.kafka_admin import ensure_topics


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    process: ManagedProcess

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"


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
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port = free_port()
    proc = start_tansu(port, tmp_path_factory.mktemp("tansu"))
    yield Broker("127.0.0.1", port, proc)
    proc.stop()


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


@pytest.fixture
def topic_prefix() -> str:
    """Unique topic names per test."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(broker: Broker, topic_prefix: str) -> dict[str, str]:
    return await ensure_topics(broker.bootstrap, topic_prefix, partitions=4)


@pytest.fixture
def worker_env(broker: Broker, redis_server: RedisServer, topic_prefix: str) -> dict[str, str]:
    """FLASHSALE_* variables pointing a worker/gateway/dashboard at the test broker and Redis."""
    return {
        "FLASHSALE_BROKER_URL": broker.url,
        "FLASHSALE_REDIS_URL": redis_server.url,
        "FLASHSALE_TOPIC_PREFIX": topic_prefix,
        "FLASHSALE_APP_ID": f"app-{topic_prefix.rstrip('.')}",
        "FLASHSALE_PARTITIONS": "4",
        "FLASHSALE_WORKER_PORT": str(free_port()),
        "FLASHSALE_SESSION_TIMEOUT_S": "6",
    }


@dataclass
class WorkerHandle:
    process: ManagedProcess
    port: int
    env: dict[str, str]


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", timeout: float = 40.0) -> WorkerHandle:
    """Start ``python -m streams`` with ``env`` and wait until /readyz answers 200 (group joined)."""
    import os
    import time
    import urllib.request

    from flashsale.embedded import python_module

    port = int(env["FLASHSALE_WORKER_PORT"])
    proc = python_module("streams", [], log_dir, name, env={**os.environ, **env})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.stop()
            raise RuntimeError(f"worker exited with {proc.popen.returncode}: {proc.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return WorkerHandle(proc, port, env)
        except OSError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"worker not ready in {timeout}s: {proc.log_path.read_text()[-3000:]}")


@pytest.fixture
def worker(worker_env: dict[str, str], topics: dict[str, str], tmp_path: Path) -> Iterator[WorkerHandle]:
    """One running worker process on the test's topics; stopped by PID afterwards."""
    handle = start_worker(worker_env, tmp_path)
    yield handle
    handle.process.stop()
