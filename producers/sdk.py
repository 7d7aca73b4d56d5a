"""Python SDK: validate events, batch them per partition key, publish with aiokafka, await the acks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from kernel.kafka_auth import KafkaAuth
from kernel.redis import connect
from kernel.signing import OutputKeys
from producers.decisions import Decision, DecisionWaiter
from schemas.codec import encode_event
from schemas.events import Event, OrderPlaced, ValidationError, check_event, make_event, parse_event
from schemas.topics import TopicNames, partition_key

if TYPE_CHECKING:
    from producers.settings import PublisherSettings

logger = logging.getLogger(__name__)

RECORD_OVERHEAD: Final = 64 * 1024  # headroom over max_batch_bytes for Kafka record framing
_ORDER_NS: Final = uuid.UUID("6f1c3f4e-8a53-4d0a-9a43-53a1e5f1a7c1")
_ORDER_NS_BYTES: Final = _ORDER_NS.bytes


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored one record; ``count`` is the number of events in it."""

    topic: str
    partition: int
    offset: int
    count: int


@dataclass(frozen=True)
class ItemError:
    index: int
    field: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BatchValidationError(ValidationError):
    """Some events of a batch are invalid; nothing was sent. ``errors`` lists every one."""

    def __init__(self, errors: Sequence[ItemError]) -> None:
        first = errors[0]
        super().__init__(first.field, first.message)
        self.index = first.index
        self.errors = list(errors)
        more = f" (and {len(errors) - 1} more invalid events)" if len(errors) > 1 else ""
        where = f"{first.field}: " if first.field else ""
        self.args = (f"event {first.index}: {where}{first.message}{more}",)


class PublishError(ConnectionError):
    """The broker could not be reached or did not acknowledge; ``deliveries`` holds records that did land."""

    def __init__(self, message: str, deliveries: Sequence[Delivery] = ()) -> None:
        super().__init__(message)
        self.deliveries = list(deliveries)


class DecisionTimeout(TimeoutError):
    """No decision arrived in time; the order was published and will still be decided."""

    def __init__(self, sale_id: str, order_id: str, timeout: float) -> None:
        super().__init__(f"no decision for order {order_id} of sale {sale_id} within {timeout:g}s "
                         "(is a worker running?)")
        self.sale_id = sale_id
        self.order_id = order_id


@dataclass(frozen=True)
class Prepared:
    event: Event
    raw: bytes


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    count: int


def prepare(item: Event | dict[str, Any]) -> Prepared:
    """Validate one event, once, and encode it (an Event is checked too: Structs do not check when built)."""
    if isinstance(item, Event):
        event = check_event(item)
    else:
        event = parse_event(item)
    return Prepared(event, encode_event(event))


def prepare_all(items: Iterable[Event | dict[str, Any]]) -> tuple[list[Prepared], list[ItemError]]:
    """Validate every item; the errors name each bad item's index and field."""
    ok: list[Prepared] = []
    errors: list[ItemError] = []
    for i, item in enumerate(items):
        try:
            ok.append(prepare(item))
        except ValidationError as err:
            errors.append(ItemError(i, err.field, err.message))
    return ok, errors


def plan_records(items: Sequence[Prepared], names: TopicNames, max_events: int, max_bytes: int) -> list[Record]:
    """Group by (topic, key) in arrival order; one record per chunk: a JSON object for one event, an
    array for several, never more than ``max_events`` events or (unless one event is larger) ``max_bytes``."""
    groups: dict[tuple[str, bytes], list[bytes]] = {}
    for p in items:
        groups.setdefault((names.for_event(p.event), partition_key(p.event)), []).append(p.raw)
    out: list[Record] = []
    for (topic, key), raws in groups.items():
        chunk: list[bytes] = []
        size = 2
        for raw in raws:
            if chunk and (len(chunk) >= max_events or size + len(raw) + 1 > max_bytes):
                out.append(record_of(topic, key, chunk))
                chunk, size = [], 2
            chunk.append(raw)
            size += len(raw) + 1
        if chunk:
            out.append(record_of(topic, key, chunk))
    return out


def record_of(topic: str, key: bytes, chunk: list[bytes]) -> Record:
    """One record of encoded events sharing a key: the event itself, or a batched envelope (JSON array)."""
    value = chunk[0] if len(chunk) == 1 else b"[" + b",".join(chunk) + b"]"
    return Record(topic, key, value, len(chunk))



def order_event_id(sale_id: str, order_id: str) -> str:
    """A stable event id per order, so a retried placement is a replay, not a duplicate attempt:
    ``uuid5(namespace, "order.placed\\0<sale>\\0<order>").hex``, computed without building UUID objects
    (the gateway derives one per order request)."""
    digest = bytearray(hashlib.sha1(_ORDER_NS_BYTES + f"order.placed\x00{sale_id}\x00{order_id}".encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


class Publisher:
    """Publishes events to the pipeline's topics. Use ``async with Publisher(...) as p``."""

    def __init__(self, bootstrap: str, *, topic_prefix: str = "flashsale.", acks: str | int = "all",
                 linger_ms: int = 5, compression: str | None = None, enable_idempotence: bool = False,
                 max_batch_events: int = 500, max_batch_bytes: int = 900_000, redis_url: str | None = None,
                 redis_cluster: bool = False, timeout_s: float = 10.0, client_id: str = "flashsale-sdk",
                 output_keys: OutputKeys | None = None, kafka_auth: KafkaAuth | None = None) -> None:
        if max_batch_events < 1:
            raise ValueError("max_batch_events must be >= 1")
        self.bootstrap = bootstrap
        self.names = TopicNames(topic_prefix)
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.timeout_s = timeout_s
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap, "client_id": client_id, "acks": acks, "linger_ms": linger_ms,
            "compression_type": compression, "enable_idempotence": enable_idempotence,
            "max_request_size": max(1_048_576, max_batch_bytes + RECORD_OVERHEAD),
            "max_batch_size": 256 * 1024, "request_timeout_ms": int(timeout_s * 1000),
            **(kafka_auth.aiokafka_kwargs() if kafka_auth is not None else {}),
        }
        self._kafka_auth = kafka_auth
        self._redis_url = redis_url
        self._output_keys = output_keys  # decisions no worker signed never answer place_order
        self._redis_cluster = redis_cluster
        self._producer: AIOKafkaProducer | None = None
        self._waiter: DecisionWaiter | None = None
        self._redis: Any = None
        self._waiter_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, s: PublisherSettings) -> Publisher:
        return cls(s.bootstrap, topic_prefix=s.topic_prefix, acks=s.acks, linger_ms=s.linger_ms,
                   compression=s.compression, enable_idempotence=s.idempotence, max_batch_events=s.batch_events,
                   max_batch_bytes=s.batch_bytes, redis_url=s.redis_url, redis_cluster=s.redis_cluster,
                   timeout_s=s.timeout_ms / 1000, output_keys=s.output_keys, kafka_auth=s.kafka_auth)

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._producer is not None:
            return
        try:
            producer = AIOKafkaProducer(**self._options)
        except (AssertionError, RuntimeError, ValueError) as exc:
            raise ValueError(f"bad producer settings: {exc}") from exc
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            raise PublishError(f"cannot connect to Kafka at {self.bootstrap} (timeout {self.timeout_s:g}s): "
                               f"{exc or type(exc).__name__}") from exc
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        logger.info("publisher connected to %s", self.bootstrap)

    async def close(self) -> None:
        """Flush what is queued, then stop the producer, the decision waiter and the Redis client."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            await waiter.close()
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.flush(), self.timeout_s)
            except (KafkaError, TimeoutError) as exc:
                logger.warning("flush on close failed: %s", exc)
            await producer.stop()

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Publisher is not started: use 'async with Publisher(...)' or await start()")
        return self._producer

    async def publish(self, event: Event | dict[str, Any]) -> Delivery:
        """Validate (ValidationError, nothing sent), send one event, and wait for the broker's ack."""
        item = prepare(event)
        [delivery] = await self.send_records(plan_records([item], self.names, 1, self.max_batch_bytes))
        return delivery

    async def publish_many(self, events: Iterable[Event | dict[str, Any]]) -> list[Delivery]:
        """Validate all (BatchValidationError naming index and field, nothing sent), then send batched
        records per (topic, key) and wait for every ack."""
        items, errors = prepare_all(events)
        if errors:
            raise BatchValidationError(errors)
        return await self.publish_prepared(items)

    async def publish_prepared(self, items: Sequence[Prepared]) -> list[Delivery]:
        """Send events already validated by :func:`prepare_all` (the gateway validates before rate limiting)."""
        if not items:
            return []
        return await self.send_records(plan_records(items, self.names, self.max_batch_events,
                                                    self.max_batch_bytes))

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> Delivery:
        """Send bytes as they are, without validation (tools and tests inject bad input this way)."""
        [delivery] = await self._send([(topic, key, value, 1)])
        return delivery

    async def send_records(self, records: Sequence[Record]) -> list[Delivery]:
        return await self._send([(r.topic, r.key, r.value, r.count) for r in records])

    async def _send(self, records: Sequence[tuple[str, bytes | None, bytes, int]]) -> list[Delivery]:
        producer = self._require()
        futures: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        for topic, key, value, _ in records:
            try:
                futures.append(await producer.send(topic, value, key=key))
            except KafkaError as exc:
                failure = exc
                break
        results = await asyncio.gather(*futures, return_exceptions=True)
        deliveries = []
        for (_, _, _, count), res in zip(records, results, strict=False):
            if isinstance(res, BaseException):
                failure = failure or res
            else:
                deliveries.append(Delivery(res.topic, res.partition, res.offset, count))
        if failure is not None:
            raise PublishError(f"publishing to Kafka at {self.bootstrap} failed after {len(deliveries)} of "
                               f"{len(records)} records: {failure or type(failure).__name__}",
                               deliveries) from failure
        return deliveries

    async def decision_waiter(self) -> DecisionWaiter:
        """The waiter ``place_order`` uses (started on first use; follows the decisions topic from its end)."""
        async with self._waiter_lock:
            if self._waiter is None:
                if self._redis_url is not None and self._redis is None:
                    self._redis = connect(self._redis_url, self._redis_cluster)
                waiter = DecisionWaiter(self.bootstrap, self.names.decisions, redis=self._redis,
                                        start_timeout_s=self.timeout_s, output_keys=self._output_keys,
                                        kafka_auth=self._kafka_auth)
                await waiter.start()
                self._waiter = waiter
            return self._waiter

    async def place_order(self, *, sale_id: str, sku: str, user_id: str, room_id: str, qty: int = 1,
                          unit_price: int, order_id: str | None = None, channel: str = "live_room",
                          referrer_id: str | None = None, timeout: float = 5.0) -> Decision:  # noqa: ASYNC109
        """Publish order.placed and wait for its decision (DecisionTimeout if none comes in ``timeout`` s).

        Retrying with the same ``order_id`` is safe: the event id is derived from it, so the worker
        treats the retry as a replay and answers with the original decision.
        """
        order_id = order_id or uuid.uuid4().hex
        event = make_event(OrderPlaced(order_id=order_id, sale_id=sale_id, sku=sku, qty=qty, unit_price=unit_price),
                           event_id=order_event_id(sale_id, order_id), ts=int(time.time() * 1000),
                           room_id=room_id, user_id=user_id, channel=channel, referrer_id=referrer_id)
        waiter = await self.decision_waiter()
        await self.publish(event)
        decision = await waiter.wait(sale_id, order_id, timeout, user_id=user_id)
        if decision is None:
            raise DecisionTimeout(sale_id, order_id, timeout)
        return decision
