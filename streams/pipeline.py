"""What agents are given: the app, its topics, settings, metrics, and the service owning the worker's Redis clients."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service

from kernel.redis import AnyRedis, connect
from kernel.signing import OutputKeys
from schemas.topics import TopicNames
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0  # the /readyz ping's connect and reply timeout


class FlashsaleApp(faust.App):
    """faust.App plus what our transport reads (see streams.transport): the consumer fetch wait and
    which topics' records reach the agents coalesced, in runs of at most how many records."""

    fetch_max_wait_ms: int = 50
    coalesce_topics: frozenset[str] = frozenset()
    coalesce_max_records: int = 1000


class RedisClients(Service):
    """Owns the worker's Redis clients: each is made on first use (inside the running loop, so no
    I/O at import or build time) and all are closed when the app stops."""

    def __init__(self, settings: WorkerSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._clients: dict[str, AnyRedis] = {}

    def main(self) -> AnyRedis:
        """The client the agents' stores share (stock and counters)."""
        return self._get("main", self._settings.redis_timeout_s)

    def probe(self) -> AnyRedis:
        """A client with short timeouts for /readyz, so a hung Redis cannot hang the health check."""
        return self._get("probe", PROBE_TIMEOUT_S)

    def _get(self, name: str, timeout_s: float | None) -> AnyRedis:
        if self.should_stop:
            raise ConnectionError("the worker is stopping; no new Redis clients")
        client = self._clients.get(name)
        if client is None:
            s = self._settings
            # Our own limits, not redis-py's defaults (which change between versions): every connect and
            # reply is bounded, a timeout or lost connection raises at once (no hidden retries: the
            # batch's retry loop goes again on a fresh connection) and an idle connection is PINGed
            # before reuse.
            client = self._clients[name] = connect(s.redis_url, s.redis_cluster, timeout_s=timeout_s, retries=0,
                                                   health_check_s=s.redis_health_check_s)
        return client

    async def on_stop(self) -> None:
        clients, self._clients = self._clients, {}
        for name, client in clients.items():
            try:
                await client.aclose()
            except Exception as exc:  # closing a broken connection: nothing left to release
                logger.debug("closing the %s Redis client: %r", name, exc)


@dataclass
class Pipeline:
    """What agents need: settings, the app's topics, metrics and the Redis clients' owner."""

    settings: WorkerSettings
    app: FlashsaleApp
    names: TopicNames
    metrics: WorkerMetrics
    redis: RedisClients
    orders: Any
    engagement: Any
    decisions: Any
    alerts: Any
    dead_letter: Any
    # Signs every record this worker produces (one HMAC per record); None: outputs go unsigned.
    output_keys: OutputKeys | None = field(init=False)

    def __post_init__(self) -> None:
        self.output_keys = self.settings.output_keys
        if self.output_keys is None:
            logger.warning("FLASHSALE_OUTPUT_SIGNING_KEY is not set: this worker's outputs are not signed, and "
                           "it counts any order decision it reads (anyone who can write the topic can forge one)")
        else:
            logger.info("signing outputs with key %s", self.output_keys.signing_key_id)

    async def send(self, logical: str, key: bytes, value: bytes) -> Any:
        """Produce to a pipeline topic, signed when a key is configured; returns an awaitable resolved
        when the broker acknowledges, or raising ``asyncio.TimeoutError`` (transient: the batch is
        retried) if that takes longer than FLASHSALE_SEND_TIMEOUT_S. Handing the record to the producer
        is bounded the same way."""
        topic = {"order-decisions": self.decisions, "alerts": self.alerts, "dead-letter": self.dead_letter,
                 "orders": self.orders, "engagement": self.engagement}[logical]
        limit = self.settings.send_timeout_s
        if self.output_keys is None:
            fut = await asyncio.wait_for(topic.send(key=key, value=value), limit)
        else:
            fut = await asyncio.wait_for(
                topic.send(key=key, value=value, headers=[self.output_keys.header(logical, value)]), limit)
        # The clock runs from now, whether or not (or when) the caller awaits; a failure nobody awaited
        # is marked retrieved (the caller that stopped waiting has retried the batch already).
        acked = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(fut), limit))
        acked.add_done_callback(_retrieve)
        return acked


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
