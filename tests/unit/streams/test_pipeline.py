"""streams.pipeline: the app built without I/O (the Redis clients service is tested in tests/integration)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streams.app import create_app
from streams.pipeline import RedisClients
from streams.settings import get_settings


def test_create_app_owns_one_redis_service_and_registers_every_agent() -> None:
    pipeline = create_app(get_settings({}), CollectorRegistry())
    assert [c for c in pipeline.app._children if isinstance(c, RedisClients)] == [pipeline.redis]
    assert {"flashsale.stock", "flashsale.counters_engagement", "flashsale.counters_orders",
            "flashsale.counters_decisions"} <= set(pipeline.app.agents)
