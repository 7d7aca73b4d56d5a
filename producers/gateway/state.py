"""What the gateway's handlers share: settings, metrics, limiter, publisher, decision waiter, Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from kernel.kafka_admin import ensure_topics
from kernel.redis import connect
from producers.decisions import DecisionReader, DecisionWaiter
from producers.gateway.coalesce import OrderCoalescer
from producers.gateway.http import Authenticator
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.ratelimit import TokenBucketLimiter
from producers.gateway.settings import GatewaySettings, Network
from producers.sdk import Publisher
from schemas import keys

logger = logging.getLogger(__name__)

CONNECT_BACKOFF_MAX_S = 10.0
DECISION_POLL_S = 0.5  # how often a waiting order looks at Redis, only while the decisions topic is unhealthy


def connect_redis(settings: GatewaySettings) -> Any:
    """A blocking pool of ``FLASHSALE_GATEWAY_REDIS_POOL`` connections: under load a command waits for a
    free connection (up to the decision timeout, at least a second) instead of failing. No I/O here:
    redis-py connects on the first command, inside the running loop."""
    return connect(settings.redis_url, settings.redis_cluster, connect_timeout_s=2.0,
                   max_connections=settings.redis_pool, pool_wait_s=max(1.0, settings.decision_timeout_ms / 1000))


@dataclass(frozen=True)
class SaleStock:
    """What the door knows of a sale: its sold-out flag and its available units (None: unknown), and what
    an order needs to be able to succeed (open, its SKU and price, the per-user limit; None: unknown)."""

    sold_out: bool
    available: int | None
    open: bool | None = None
    sku: str | None = None
    price: int | None = None
    per_user_limit: int | None = None

    def units_at_stake(self, qty: int, sku: str, unit_price: int) -> int:
        """The units an order can take if the worker accepts it, for admission control: 0 when it cannot
        succeed whatever is in flight (the sale is not open, another SKU or price, more than the per-user
        limit), so an order the worker will reject never holds the sale's units at the door."""
        if self.open is False:
            return 0
        if (self.sku is not None and sku != self.sku) or (self.price is not None and unit_price != self.price):
            return 0
        if self.per_user_limit is not None and qty > self.per_user_limit:
            return 0
        return qty


UNKNOWN: Final = SaleStock(False, None)
STOCK_FIELDS: Final = ("soldout", "available", "status", "sku", "price", "per_user_limit")


class SoldOutCache:
    """The sale hash's ``soldout`` flag and ``available`` units, cached for ``ttl_s`` with one Redis read in
    flight per sale, so a flood of orders for a sold-out sale costs one HMGET per TTL instead of one per
    request. Fails open: if Redis cannot answer, the order goes on to the worker, which is the authority."""

    def __init__(self, redis: Any, ttl_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_sales: int = 10_000) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_sales = max_sales
        self._entries: dict[str, tuple[SaleStock, float]] = {}
        self._inflight: dict[str, list[asyncio.Future[SaleStock]]] = {}  # callers waiting for the read
        self.lookups = 0  # Redis reads made (tests and metrics read it)

    async def is_sold_out(self, sale_id: str) -> bool:
        return (await self.stock(sale_id)).sold_out

    async def stock(self, sale_id: str) -> SaleStock:
        hit = self._entries.get(sale_id)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        waiting = self._inflight.get(sale_id)
        if waiting is not None:
            fut: asyncio.Future[SaleStock] = asyncio.get_running_loop().create_future()
            waiting.append(fut)
            return await fut
        self._inflight[sale_id] = []
        value = UNKNOWN
        try:
            self.lookups += 1
            flag, available, status, sku, price, limit = await self._redis.hmget(keys.sale(sale_id),
                                                                                 list(STOCK_FIELDS))
            value = SaleStock(flag in (b"1", "1"), _int_or_none(available),
                              None if status is None else _text(status) == "open",
                              None if sku is None else _text(sku), _int_or_none(price), _int_or_none(limit))
            if len(self._entries) >= self._max_sales:
                now = self._clock()
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if self._ttl_s > 0:
                self._entries[sale_id] = (value, self._clock() + self._ttl_s)
        except (RedisError, OSError) as exc:
            logger.warning("sold-out check for sale %s failed, letting the order through: %s", sale_id, exc)
        finally:
            for waiter in self._inflight.pop(sale_id):
                if not waiter.done():
                    waiter.set_result(value)
        return value


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _int_or_none(raw: Any) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


class InFlight:
    """Units of this process's orders published and not yet answered, per sale (admission control)."""

    def __init__(self) -> None:
        self._units: dict[str, int] = {}

    def units(self, sale_id: str) -> int:
        return self._units.get(sale_id, 0)

    def admits(self, sale_id: str, qty: int, stock: SaleStock) -> bool:
        """The rule of docs/API.md: publish unless units are known, and those of the orders in flight plus
        this one's exceed them. With nothing in flight an order always goes to the worker."""
        held = self._units.get(sale_id, 0)
        return stock.available is None or held == 0 or held + qty <= stock.available

    def add(self, sale_id: str, qty: int) -> None:
        self._units[sale_id] = self._units.get(sale_id, 0) + qty

    def remove(self, sale_id: str, qty: int) -> None:
        left = self._units.get(sale_id, 0) - qty
        if left > 0:
            self._units[sale_id] = left
        else:
            self._units.pop(sale_id, None)

    def total(self) -> int:
        return sum(self._units.values())


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
    coalescer: OrderCoalescer | None = None
    reader: DecisionReader | None = None
    inflight: InFlight = field(default_factory=InFlight)
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
        self.reader = DecisionReader(self.redis)
        self.waiter = DecisionWaiter(s.publisher.bootstrap, self.publisher.names.decisions, redis=self.redis,
                                     reader=self.reader,
                                     poll_interval_s=DECISION_POLL_S, start_timeout_s=s.publisher.timeout_ms / 1000,
                                     output_keys=s.output_keys,  # a decision no worker signed never answers
                                     kafka_auth=s.publisher.kafka_auth, poll_while_healthy=False)
        self.coalescer = OrderCoalescer(self.publisher, window_s=s.coalesce_ms / 1000,
                                        max_events=s.coalesce_events,
                                        max_bytes=min(s.coalesce_bytes, s.publisher.batch_bytes),
                                        on_record=self._record_published)
        self._connect_task = asyncio.create_task(self._connect(), name="gateway-connect")

    def _record_published(self, events: int) -> None:
        self.metrics.records.inc()
        self.metrics.order_record_events.observe(events)

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
        if self.coalescer is not None:
            await self.coalescer.close()
        if self.waiter is not None:
            await self.waiter.close()
        if self.reader is not None:
            await self.reader.close()
        if self.publisher is not None:
            await self.publisher.close()
        if self.redis is not None:
            await self.redis.aclose()
