"""What the gateway's handlers share: settings, metrics, limiter, publisher, decision waiter, Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from kernel.kafka_admin import ensure_topics
from kernel.redis import connect
from producers.decisions import DecisionWaiter
from producers.gateway.http import Authenticator
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.ratelimit import TokenBucketLimiter
from producers.gateway.settings import GatewaySettings, Network
from producers.sdk import Publisher
from schemas import keys

logger = logging.getLogger(__name__)

CONNECT_BACKOFF_MAX_S = 10.0
REDIS_POOL_SIZE = 256  # a blocking pool: a burst of requests waits for a connection instead of failing
DECISION_POLL_S = 0.5  # Redis fallback polling per waiting order; the topic usually answers first


def connect_redis(settings: GatewaySettings) -> Any:
    """No I/O here: redis-py connects on the first command, inside the running loop."""
    return connect(settings.redis_url, settings.redis_cluster, connect_timeout_s=2.0,
                   max_connections=REDIS_POOL_SIZE)


class SoldOutCache:
    """The sale hash's ``soldout`` flag, cached for ``ttl_s`` with one Redis read in flight per sale, so a
    flood of orders for a sold-out sale costs one HGET per TTL instead of one per request. Fails open:
    if Redis cannot answer, the order goes on to the worker, which is the authority."""

    def __init__(self, redis: Any, ttl_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_sales: int = 10_000) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_sales = max_sales
        self._entries: dict[str, tuple[bool, float]] = {}
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self.lookups = 0  # Redis reads made (tests and metrics read it)

    async def is_sold_out(self, sale_id: str) -> bool:
        hit = self._entries.get(sale_id)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        pending = self._inflight.get(sale_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[sale_id] = fut
        value = False
        try:
            self.lookups += 1
            raw = await self._redis.hget(keys.sale(sale_id), "soldout")
            value = raw in (b"1", "1")
            if len(self._entries) >= self._max_sales:
                now = self._clock()
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if self._ttl_s > 0:
                self._entries[sale_id] = (value, self._clock() + self._ttl_s)
        except (RedisError, OSError) as exc:
            logger.warning("sold-out check for sale %s failed, letting the order through: %s", sale_id, exc)
        finally:
            del self._inflight[sale_id]
            fut.set_result(value)
        return value


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: GatewayMetrics
    limiter: TokenBucketLimiter
    auth: Authenticator
    redis: Any = None
    publisher: Publisher | None = None
    waiter: DecisionWaiter | None = None
    soldout: SoldOutCache | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _connect_task: asyncio.Task[None] | None = None

    @property
    def proxies(self) -> tuple[Network, ...]:
        return self.settings.proxies()

    @property
    def ready(self) -> bool:
        return (self.connected.is_set() and self.publisher is not None and self.publisher.started
                and self.waiter is not None and self.waiter.running)

    async def open(self) -> None:
        """Create clients (no I/O) and start connecting to Kafka in the background, retrying until it works."""
        s = self.settings
        self.redis = connect_redis(s)
        self.soldout = SoldOutCache(self.redis, s.soldout_cache_ms / 1000)
        self.publisher = Publisher.from_settings(s.publisher)
        self.waiter = DecisionWaiter(s.publisher.bootstrap, self.publisher.names.decisions, redis=self.redis,
                                     poll_interval_s=DECISION_POLL_S, start_timeout_s=s.publisher.timeout_ms / 1000,
                                     output_keys=s.output_keys,  # a decision no worker signed never answers
                                     kafka_auth=s.publisher.kafka_auth)
        self._connect_task = asyncio.create_task(self._connect(), name="gateway-connect")

    async def _connect(self) -> None:
        assert self.publisher is not None and self.waiter is not None
        s = self.settings
        delay = 0.5
        for attempt in range(1, 1_000_000):  # bounded only by shutdown: a gateway waits for its broker
            try:
                if s.auto_create_topics:
                    await asyncio.wait_for(ensure_topics(s.publisher.bootstrap, s.publisher.topic_prefix,
                                                         s.partitions, s.replication,
                                                         kafka_auth=s.publisher.kafka_auth),
                                           s.publisher.timeout_ms / 1000)
                await self.publisher.start()
                await self.waiter.start()
            except ValueError as exc:  # bad producer settings: retrying cannot help
                logger.error("cannot start the Kafka producer: %s", exc)
                return
            except (ConnectionError, KafkaError, OSError, TimeoutError) as exc:
                logger.warning("Kafka at %s not ready (attempt %d), retrying in %.1fs: %s",
                               s.publisher.bootstrap, attempt, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX_S)
                continue
            self.connected.set()
            self.metrics.ready.set(1)
            logger.info("gateway connected to Kafka at %s", s.publisher.bootstrap)
            return

    async def close(self) -> None:
        self.metrics.ready.set(0)
        task, self._connect_task = self._connect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.waiter is not None:
            await self.waiter.close()
        if self.publisher is not None:
            await self.publisher.close()
        if self.redis is not None:
            await self.redis.aclose()
