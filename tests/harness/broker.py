"""A real Tansu broker on a free loopback port (one per session) and unique topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flashsale.embedded import ManagedProcess, free_port, start_tansu
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


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port = free_port()
    proc = start_tansu(port, tmp_path_factory.mktemp("tansu"))
    yield Broker("127.0.0.1", port, proc)
    proc.stop()


@pytest.fixture
def topic_prefix() -> str:
    """Unique topic names per test."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(broker: Broker, topic_prefix: str) -> dict[str, str]:
    return await ensure_topics(broker.bootstrap, topic_prefix, partitions=4)
