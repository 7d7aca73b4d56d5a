"""A hung Redis connection is noticed within the worker's time limit (issue 13, item 6)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.pipeline import RedisClients
from streams.resilience import TRANSIENT
from streams.settings import WorkerSettings

pytestmark = pytest.mark.integration


async def test_a_blackholed_redis_times_out_instead_of_hanging_the_agent() -> None:
    held: list[asyncio.StreamWriter] = []

    async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, read, never answered
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = RedisClients(WorkerSettings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.5))
    try:
        with pytest.raises(RedisTimeoutError) as info:  # not asyncio's: the client gave up by itself
            await asyncio.wait_for(clients.main().ping(), 10)  # the old client hung here for good
        assert isinstance(info.value, TRANSIENT)  # the batch waits and retries on a fresh connection
    finally:
        await clients.on_stop()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
