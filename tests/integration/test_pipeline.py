"""streams.pipeline against the real redis-server: the service owning the worker's Redis clients."""

from __future__ import annotations

import pytest

from streams.pipeline import RedisClients
from streams.settings import get_settings
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def test_redis_clients_are_made_once_and_closed_when_the_service_stops(redis_server: RedisServer) -> None:
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
