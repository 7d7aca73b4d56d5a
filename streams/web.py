"""Operations pages on the worker's Faust web server (/metrics, /healthz, /readyz) and the consumer-lag timer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.errors import KafkaError
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import Gauge
from prometheus_client.exposition import choose_encoder
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kernel.redis import RedisUnavailable
from streams.pipeline import Pipeline

logger = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0
REDIS_TIMEOUT_S = 1.0
OFFSET_TIMEOUT_S = 2.0
BROKER_TIMEOUT_S = 1.0

LagLabels = tuple[str, str]  # (topic, partition) as the gauge's label values


def lag_of(highwater: int | None, position: int | None) -> int | None:
    """Records between the consumer's next fetch position and the partition's end; None when unknown."""
    if highwater is None or position is None:
        return None
    return max(0, highwater - position)


def apply_lag(gauge: Gauge, assigned: Iterable[TP], lags: Mapping[TP, int],
              exported: set[LagLabels]) -> set[LagLabels]:
    """Set the gauge for measured partitions, drop series of partitions no longer assigned; return what is exported.

    An assigned partition whose offsets could not be read this round keeps its last value rather than flapping.
    """
    keep = {(tp.topic, str(tp.partition)) for tp in assigned}
    for labels in sorted(exported - keep):
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
    now = exported & keep
    for tp, lag in lags.items():
        labels = (tp.topic, str(tp.partition))
        if labels in keep:
            gauge.labels(*labels).set(lag)
            now.add(labels)
    return now


class Health:
    """Group membership (from Faust's rebalance signals), Redis reachability and the lag series."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._metrics = pipeline.metrics
        # Physical topic -> the logical name used as the label (as in flashsale_events_consumed_total),
        # so series and dashboards do not depend on the deployment's topic prefix.
        self._logical = {name: logical for logical, name in pipeline.names.all().items()}
        self.joined = False
        self.assigned: frozenset[TP] = frozenset()
        self._exported: set[LagLabels] = set()
        self._metrics.up.set(0)

    async def on_assigned(self, *args: Any, **kwargs: Any) -> None:
        """Receiver of ``app.on_partitions_assigned``, called as ``(app, assigned, signal=...)``."""
        assigned: Iterable[TP] = args[1] if len(args) > 1 else ()
        # An empty assignment still means the group was joined: with more workers than partitions
        # the extra workers are idle standbys, and they are ready to take partitions over.
        self.joined = True
        self.assigned = frozenset(tp for tp in assigned if tp.topic in self._logical)
        self._metrics.up.set(1)
        self._exported = apply_lag(self._metrics.consumer_lag, self._labelled(self.assigned), {}, self._exported)
        logger.info("assigned %d pipeline partitions", len(self.assigned))

    async def on_revoked(self, *args: Any, **kwargs: Any) -> None:
        """Receiver of ``app.on_partitions_revoked``, called as ``(app, revoked, signal=...)``."""
        revoked: Iterable[TP] = args[1] if len(args) > 1 else ()
        self.assigned = self.assigned - frozenset(revoked)
        self._exported = apply_lag(self._metrics.consumer_lag, self._labelled(self.assigned), {}, self._exported)

    def _label(self, tp: TP) -> TP:
        return TP(self._logical[tp.topic], tp.partition)

    def _labelled(self, tps: Iterable[TP]) -> list[TP]:
        return [self._label(tp) for tp in tps]

    async def redis_problem(self) -> str | None:
        """None when Redis answers PING; otherwise why not (never the URL: it may hold a password).

        A connection that Redis dropped while it was away (restart, failover) fails its first use and is
        discarded: that is not an outage, so a lost connection is retried once on a fresh one (within
        the same bound) before the answer is "not ready". A timeout is not retried: Redis is not answering."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._ping(), REDIS_TIMEOUT_S * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(op="ping").inc()
            return f"redis did not answer PING: {type(exc).__name__}"
        self._metrics.redis_latency.labels(op="ping").observe(time.perf_counter() - started)
        try:
            role = await asyncio.wait_for(self._role(), REDIS_TIMEOUT_S * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(op="ping").inc()
            return f"redis did not answer ROLE: {type(exc).__name__}"
        if role not in (None, "master"):
            # A replica answers PING but refuses every write (READONLY): the stock agent would retry
            # each batch forever, so this worker is not ready (say, the URL still names a demoted primary).
            return f"redis is a read-only replica (ROLE {role}): writes are refused"
        return None

    async def _role(self) -> str | None:
        """The node's replication role (``master``, ``slave``); None on Redis Cluster, whose client
        sends every write to the slot's primary itself."""
        if self._pipeline.settings.redis_cluster:
            return None
        reply = await self._pipeline.redis.probe().execute_command("ROLE")
        first = reply[0] if isinstance(reply, list | tuple) and reply else reply
        return first.decode() if isinstance(first, bytes) else str(first)

    async def _ping(self) -> None:
        client = self._pipeline.redis.probe()
        try:
            await client.ping()
        except (RedisConnectionError, ConnectionError) as exc:
            if isinstance(exc, RedisUnavailable):
                raise
            await client.ping()

    async def broker_problem(self) -> str | None:
        """None when a broker answers a metadata request within BROKER_TIMEOUT_S on the producer's
        connections (the ones decisions go out on); otherwise why not."""
        producer: Any = self._pipeline.app.producer
        client = getattr(getattr(producer, "_producer", None), "client", None)  # the driver's aiokafka client
        if client is None:  # not started yet: the group is not joined either, which readiness reports
            return None
        try:
            await asyncio.wait_for(client.fetch_all_metadata(), BROKER_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError) as exc:
            self._metrics.broker_errors.labels(op="metadata").inc()
            return f"broker did not answer: {type(exc).__name__}"
        return None

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons = []
        if not self.joined:
            reasons.append("consumer group not joined yet")
        redis, broker = await asyncio.gather(self.redis_problem(), self.broker_problem())
        for problem in (redis, broker):
            if problem is not None:
                reasons.append(problem)
        body: dict[str, Any] = {
            "ready": not reasons, "group_joined": self.joined, "partitions": len(self.assigned),
            "rebalancing": bool(getattr(self._pipeline.app, "rebalancing", False)), "redis": redis or "ok",
        }
        if broker is not None:
            body["broker"] = broker
        if reasons:
            body["reason"] = "; ".join(reasons)
        return not reasons, body

    async def update_lag(self) -> None:
        """Lag per assigned partition = highwater (from fetch responses) - the consumer's fetch position."""
        self._metrics.up.set(1 if self.joined else 0)
        consumer = self._pipeline.app.consumer
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic in self._logical]
        except Exception as exc:  # the consumer thread is not started (yet) or is stopping
            logger.debug("no assignment to measure lag on: %r", exc)
            return
        positions: dict[TP, int] = {}
        highwaters: dict[TP, int] = {}
        for tp in assigned:
            try:
                pos = await asyncio.wait_for(consumer.position(tp), OFFSET_TIMEOUT_S)
                hw = consumer.highwater(tp)
            except Exception as exc:  # revoked in between, or no valid position yet: skip this round
                logger.debug("no offsets for %s: %r", tp, exc)
                continue
            if pos is not None:
                positions[tp] = pos
            if hw is not None:
                highwaters[tp] = hw
        missing = [tp for tp in positions if tp not in highwaters]
        if missing:  # not fetched yet (paused, or just assigned): ask the broker once
            try:
                highwaters.update(await asyncio.wait_for(consumer.highwaters(*missing), OFFSET_TIMEOUT_S))
            except Exception as exc:
                logger.debug("end offsets unavailable for %d partitions: %r", len(missing), exc)
        lags = {}
        for tp, pos in positions.items():
            lag = lag_of(highwaters.get(tp), pos)
            if lag is not None:
                lags[self._label(tp)] = lag
        self._exported = apply_lag(self._metrics.consumer_lag, self._labelled(assigned), lags, self._exported)


def register(pipeline: Pipeline) -> None:
    install(pipeline)


def install(pipeline: Pipeline) -> Health:
    """Register the pages, signal handlers and timer on the pipeline's app; return the health state."""
    app = pipeline.app
    health = Health(pipeline)
    app.on_partitions_assigned.connect(health.on_assigned)
    app.on_partitions_revoked.connect(health.on_revoked)

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return self.bytes(encoder(pipeline.metrics.registry), headers={"Content-Type": content_type})

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        ready, body = await health.readiness()
        return self.json(body, status=200 if ready else 503)

    @app.timer(interval=LAG_INTERVAL_S, name="flashsale.consumer_lag")
    async def consumer_lag() -> None:
        await health.update_lag()

    return health
