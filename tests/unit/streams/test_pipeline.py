"""streams.pipeline: the service owning the worker's Redis clients, and the app built without I/O."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.app import create_app
from streams.pipeline import RedisClients
from streams.settings import get_settings


async def test_redis_clients_are_made_once_and_closed_when_the_service_stops(redis_server: Any) -> None:
    clients = RedisClients(get_settings({"FLASHSALE_REDIS_URL": redis_server.url}))
    main, probe = clients.main(), clients.probe()
    assert clients.main() is main and clients.probe() is probe and main is not probe
    assert await main.ping() and await probe.ping()
    await clients.start()
    await clients.stop()
    for client in (main, probe):
        pool = client.connection_pool
        assert not pool._in_use_connections and not any(c.is_connected for c in pool._available_connections)
    with pytest.raises(ConnectionError):
        clients.main()


def test_create_app_owns_one_redis_service_and_registers_every_agent() -> None:
    pipeline = create_app(get_settings({}), CollectorRegistry())
    assert [c for c in pipeline.app._children if isinstance(c, RedisClients)] == [pipeline.redis]
    assert {"flashsale.stock", "flashsale.counters_engagement", "flashsale.counters_orders",
            "flashsale.counters_decisions"} <= set(pipeline.app.agents)
