"""Order decisions: read them from Redis, or wait for them on the order-decisions topic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from kernel.kafka_auth import KafkaAuth
from kernel.signing import OutputKeys
from schemas import keys
from schemas.codec import DecisionItem, decode_decisions, decode_record
from schemas.events import Event, OrderAccepted, OrderRejected
from schemas.order_record import OrderRecordError, parse_order_record
from schemas.topics import DECISIONS

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Decision:
    """The pipeline's answer to one order.placed: accepted (units reserved) or rejected (with a reason)."""

    order_id: str
    sale_id: str
    outcome: str  # "accepted" | "rejected"
    reason: str | None
    state: str  # reserved | rejected | sold | expired | cancelled
    qty: int
    reserved_until: int | None
    # the decision event, from decision_from_event; the waiter reads decisions with the light decoder
    # (schemas.codec.decode_decisions) and leaves it None
    event: dict[str, Any] | None = None
    user_id: str | None = field(default=None, compare=False)  # whose attempt it answers (None: unknown)

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    def to_dict(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "sale_id": self.sale_id, "outcome": self.outcome, "reason": self.reason,
                "state": self.state, "qty": self.qty, "reserved_until": self.reserved_until}


def decision_from_event(event: Event) -> Decision | None:
    """order.accepted / order.rejected → Decision; other event types → None."""
    data = event.data
    if isinstance(data, OrderAccepted):
        return Decision(data.order_id, data.sale_id, "accepted", None, "reserved", data.qty, data.reserved_until,
                        event.to_dict(), event.user_id)
    if isinstance(data, OrderRejected):
        return Decision(data.order_id, data.sale_id, "rejected", data.reason, "rejected", data.qty, None,
                        event.to_dict(), event.user_id)
    return None


def decision_from_item(item: DecisionItem) -> Decision:
    """A decision read by the light decoder (``schemas.codec.decode_decisions``) → Decision."""
    d = item.data
    user = item.user_id or None
    if item.type == "order.accepted":
        return Decision(d.order_id, d.sale_id, "accepted", None, "reserved", d.qty, d.reserved_until or None,
                        None, user)
    return Decision(d.order_id, d.sale_id, "rejected", d.reason or None, "rejected", d.qty, None, None, user)


def decision_from_record(sale_id: str, order_id: str, raw: bytes | str, user_id: str | None = None
                         ) -> Decision | None:
    """The decision an order record of the stock script holds (``schemas.order_record``); None if unreadable.

    With ``user_id``: the answer that user's attempt gets. An order id belongs to the user who first
    placed it, so another user's attempt is rejected ``order_id_taken`` (what the worker answers it),
    never given the owner's decision."""
    try:
        rec = parse_order_record(raw)
    except OrderRecordError as exc:
        logger.warning("unreadable order record for sale %s order %s: %s", sale_id, order_id, exc)
        return None
    if user_id is not None and rec.user_id != user_id:
        return Decision(order_id, sale_id, "rejected", "order_id_taken", "rejected", 0, None, None, user_id)
    if not rec.accepted:
        return Decision(order_id, sale_id, "rejected", rec.reason or None, rec.state, rec.qty, None, None,
                        rec.user_id)
    return Decision(order_id, sale_id, "accepted", None, rec.state, rec.qty, rec.reserved_until or None, None,
                    rec.user_id)


async def read_decision(redis: Any, sale_id: str, order_id: str, user_id: str | None = None) -> Decision | None:
    """The order's current decision from the sale's orders hash; None while it is pending or unknown.
    With ``user_id``, the answer to that user's attempt (see :func:`decision_from_record`)."""
    raw = await redis.hget(keys.sale_orders(sale_id), order_id)
    if raw is None:
        return None
    return decision_from_record(sale_id, order_id, raw, user_id)


class DecisionReader:
    """``read_decision`` for many concurrent callers: the order ids asked for one sale while a read is
    being prepared or is in flight are fetched by the next single HMGET, so a flood of lookups (retries
    on a sold-out sale, waits falling back to Redis) costs one Redis command per round trip and sale,
    not one per order, and holds one pool connection per sale."""

    def __init__(self, redis: Any, max_batch: int = 1000) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: dict[str, dict[str, asyncio.Future[bytes | None]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self.commands = 0  # HMGETs sent (tests and benchmarks read it)

    async def read(self, sale_id: str, order_id: str, user_id: str | None = None) -> Decision | None:
        """As :func:`read_decision`; raises what Redis raised (to every caller of that HMGET)."""
        batch = self._pending.setdefault(sale_id, {})
        fut = batch.get(order_id)
        if fut is None:
            fut = batch[order_id] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
        if sale_id not in self._flushers:
            task = asyncio.create_task(self._flush(sale_id), name=f"decision-reads:{sale_id}")
            self._flushers[sale_id] = task
        raw = await asyncio.shield(fut)
        return None if raw is None else decision_from_record(sale_id, order_id, raw, user_id)

    async def _flush(self, sale_id: str) -> None:
        try:
            await asyncio.sleep(0)  # the lookups of this loop iteration go together
            while batch := self._pending.get(sale_id):
                taken = dict(itertools.islice(batch.items(), self._max_batch))
                for order_id in taken:
                    del batch[order_id]
                if not batch:
                    del self._pending[sale_id]
                self.commands += 1
                try:
                    values = await self._redis.hmget(keys.sale_orders(sale_id), list(taken))
                except (RedisError, OSError) as exc:
                    for fut in taken.values():
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for fut, raw in zip(taken.values(), values, strict=True):
                    if not fut.done():
                        fut.set_result(raw)
        finally:
            del self._flushers[sale_id]
            for fut in self._pending.pop(sale_id, {}).values():  # only when cancelled at shutdown
                if not fut.done():
                    fut.set_exception(ConnectionError("the decision reader stopped"))

    async def close(self) -> None:
        for task in list(self._flushers.values()):
            task.cancel()
        for task in list(self._flushers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class DecisionWaiter:
    """Follows the order-decisions topic (no consumer group: every partition, from the end) and resolves
    waiters by order id; ``wait`` also reads Redis (every poll interval, or with
    ``poll_while_healthy=False`` only while the subscription is down or behind, and at the deadline), so
    a decision made before the waiter started, or one whose event was missed, is still found."""

    def __init__(self, bootstrap: str, topic: str, *, redis: Any | None = None, poll_interval_s: float = 0.25,
                 fetch_max_wait_ms: int = 50, remember: int = 20_000, start_timeout_s: float = 10.0,
                 client_id: str = "flashsale-decisions", output_keys: OutputKeys | None = None,
                 kafka_auth: KafkaAuth | None = None, poll_while_healthy: bool = True,
                 behind_records: int = 1000, stale_s: float = 1.5, reader: DecisionReader | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._redis = redis
        self._reader = reader  # with it, concurrent Redis looks share HMGETs
        self._poll_interval_s = poll_interval_s
        # False (the gateway): Redis is read only while the subscription is unhealthy (down, stalled, or
        # more than ``behind_records`` behind the end) and once at the deadline; a healthy topic answers.
        self._poll_while_healthy = poll_while_healthy
        self._behind_records = behind_records
        self._stale_s = stale_s
        self._healthy_until = 0.0  # loop time until which the last fetch vouches for the subscription
        self.redis_reads = 0  # Redis reads made by waits (tests and benchmarks read it)
        self._closed = False
        self.redis_errors = 0
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._remember = remember
        self._start_timeout_s = start_timeout_s
        self._client_id = client_id
        self._kafka_options = kafka_auth.aiokafka_kwargs() if kafka_auth is not None else {}
        # With keys, only records a worker signed resolve waits; the others are dropped and counted.
        self._output_keys = output_keys
        self.unsigned_dropped = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # keyed by (sale_id, order_id): order ids are unique within a sale, not across sales
        # keyed by (sale, order, user): a decision answers the attempt of the user it names
        self._waiters: dict[tuple[str, str, str | None], list[asyncio.Future[Decision | None]]] = {}
        self._recent: OrderedDict[tuple[str, str, str | None], Decision] = OrderedDict()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Following the topic, at its end: the last fetch returned recently and was not far behind."""
        return self.running and asyncio.get_running_loop().time() < self._healthy_until

    async def __aenter__(self) -> DecisionWaiter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Assign every partition and fix the start positions at the end, before returning."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="latest", fetch_max_wait_ms=self._fetch_max_wait_ms,
                                    client_id=self._client_id, request_timeout_ms=int(self._start_timeout_s * 1000),
                                    **self._kafka_options)
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await consumer.start()
                partitions = await self._partitions(consumer)
                tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)
                for tp in tps:
                    await consumer.position(tp)
        except (KafkaError, OSError, TimeoutError) as exc:
            await consumer.stop()
            raise ConnectionError(f"cannot follow {self.topic} on Kafka at {self.bootstrap} (timeout "
                                  f"{self._start_timeout_s:g}s): {exc or type(exc).__name__}") from exc
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._closed = False
        self._healthy_until = asyncio.get_running_loop().time() + self._stale_s  # positions are at the end
        self._task = asyncio.create_task(self._run(), name=f"decisions:{self.topic}")
        logger.info("following %s (%d partitions) on %s", self.topic, len(tps), self.bootstrap)
        if self._output_keys is None:
            logger.warning("FLASHSALE_OUTPUT_SIGNING_KEY is not set: decisions on %s are not checked, so anyone "
                           "who can write the topic can answer an order", self.topic)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(200):  # bounded; the enclosing timeout bounds the time
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return set(parts)
            # aiokafka has no public call for an unsubscribed topic's partitions; refresh all metadata.
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.05)
        raise KafkaError(f"topic {self.topic} does not exist")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self._closed = True
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)  # the wait ends now (after a last look at Redis), not at its deadline
        self._waiters.clear()

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        monitor = asyncio.create_task(self._monitor(consumer), name=f"decisions-lag:{self.topic}")
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                except KafkaError as exc:
                    self._healthy_until = 0.0
                    logger.warning("reading %s failed, retrying: %s", self.topic, exc)
                    await asyncio.sleep(0.5)
                    continue
                for records in batches.values():
                    for record in records:
                        self._apply_record(record.value, record.headers)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _monitor(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the broker for the topic's end offsets every third of ``stale_s``: answered and at most
        ``behind_records`` ahead of what was read, the subscription is healthy for ``stale_s`` more."""
        loop = asyncio.get_running_loop()
        tps = sorted(consumer.assignment())
        while True:
            await asyncio.sleep(self._stale_s / 3)
            try:
                async with asyncio.timeout(self._stale_s):
                    ends = await consumer.end_offsets(tps)
                    lag = 0
                    for tp in tps:
                        lag += max(0, ends.get(tp, 0) - await consumer.position(tp))
            except (KafkaError, OSError, TimeoutError) as exc:
                if self._healthy_until:
                    logger.warning("the end of %s is unknown (%s): orders fall back to Redis", self.topic,
                                   exc or type(exc).__name__)
                self._healthy_until = 0.0
                continue
            if lag > self._behind_records:
                if self._healthy_until:
                    logger.warning("%s: %d decisions behind: orders fall back to Redis", self.topic, lag)
                self._healthy_until = 0.0
            else:
                self._healthy_until = loop.time() + self._stale_s

    def _apply_record(self, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        """Resolve the waits a record answers; with keys, a record no worker signed is dropped."""
        if self._output_keys is not None and not self._output_keys.verify(DECISIONS, value, headers):
            self.unsigned_dropped += 1
            if self.unsigned_dropped == 1 or self.unsigned_dropped % 1000 == 0:
                logger.warning("dropped a record on %s without a valid worker signature (%d so far)",
                               self.topic, self.unsigned_dropped)
            return
        items = decode_decisions(value)
        if items is None:  # not the shape workers write: say why, resolve nothing
            decoded = decode_record(value)
            detail = decoded.errors[0].detail if decoded.errors else "unexpected shape"
            logger.warning("undecodable record on %s: %s", self.topic, detail)
            return
        for item in items:
            self.resolve(decision_from_item(item))

    def resolve(self, decision: Decision) -> None:
        """Record a decision (the first one per order wins; replays carry the same answer). A
        ``duplicate`` rejection answers a repeated attempt, not the order: it is ignored here (a
        waiter gets the order's own decision from the topic or from the Redis order record)."""
        if decision.reason == "duplicate":
            return
        keys_: list[tuple[str, str, str | None]] = [(decision.sale_id, decision.order_id, decision.user_id)]
        if decision.reason != "order_id_taken":  # the owner's decision also answers a wait that names no user
            keys_.append((decision.sale_id, decision.order_id, None))
        for key in keys_:
            if key not in self._recent:
                self._recent[key] = decision
                while len(self._recent) > self._remember:
                    self._recent.popitem(last=False)
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(self._recent[key])

    def recent(self, sale_id: str, order_id: str, user_id: str | None = None) -> Decision | None:
        return self._recent.get((sale_id, order_id, user_id))

    async def wait(self, sale_id: str, order_id: str, timeout: float,  # noqa: ASYNC109
                   user_id: str | None = None) -> Decision | None:
        """The decision answering ``user_id``'s attempt to place the order, or None when none arrives
        within ``timeout`` seconds. Decisions for another user's attempt with the same order id never
        resolve this wait.

        Costs one future and one timer per poll interval. Redis (when given) is read at the start and
        every poll interval, or, with ``poll_while_healthy=False``, only while the subscription is
        unhealthy and once at the deadline. A Redis error (refused, timed out, pool exhausted) is not an
        answer: the wait goes on until the deadline."""
        key = (sale_id, order_id, user_id)
        seen = self._recent.get(key)
        if seen is not None:
            return seen
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._should_poll():
            found = await self._read(sale_id, order_id, user_id, deadline)
            if found is not None:
                return found
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fut: asyncio.Future[Decision | None] = loop.create_future()
            self._waiters.setdefault(key, []).append(fut)
            timer = loop.call_later(min(self._poll_interval_s, remaining), _tick, fut)
            try:
                decision = await fut
            finally:
                timer.cancel()
                waiters = self._waiters.get(key)  # resolve() pops the list it answers
                if waiters is not None:
                    with contextlib.suppress(ValueError):
                        waiters.remove(fut)
                    if not waiters:
                        del self._waiters[key]
            if decision is not None:
                return decision
            seen = self._recent.get(key)
            if seen is not None:
                return seen
            if self._closed:
                break
            if self._should_poll() and deadline - loop.time() > 0:
                found = await self._read(sale_id, order_id, user_id, deadline)
                if found is not None:
                    return found
        if self._redis is None:
            return None
        # the deadline: one last look at the order record (a decision whose event was missed)
        return await self._read(sale_id, order_id, user_id, loop.time() + min(self._poll_interval_s, 1.0))

    def _should_poll(self) -> bool:
        return self._redis is not None and (self._poll_while_healthy or not self.healthy)

    async def _read(self, sale_id: str, order_id: str, user_id: str | None, deadline: float) -> Decision | None:
        """The order record's answer, bounded by ``deadline`` (loop time); None on any Redis trouble."""
        self.redis_reads += 1
        try:
            async with asyncio.timeout_at(deadline):
                if self._reader is not None:
                    return await self._reader.read(sale_id, order_id, user_id)
                return await read_decision(self._redis, sale_id, order_id, user_id)
        except (RedisError, OSError, TimeoutError) as exc:
            self.redis_errors += 1
            if self.redis_errors == 1 or self.redis_errors % 1000 == 0:
                logger.warning("reading order %s of sale %s from Redis failed (%d so far), still waiting for "
                               "its decision: %s", order_id, sale_id, self.redis_errors, exc or type(exc).__name__)
            return None


def _tick(fut: asyncio.Future[Decision | None]) -> None:
    """A poll interval passed without a decision: wake the wait (None), unless a decision came first."""
    if not fut.done():
        fut.set_result(None)
