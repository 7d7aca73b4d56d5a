"""The Faust app: declarations only. ``create_app(settings)`` builds it; nothing runs at import."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CollectorRegistry

from schemas.topics import DEFAULT_PARTITIONS, TopicNames
from streams import web
from streams.counters import agent as counters_agent
from streams.metrics import WorkerMetrics
from streams.pipeline import FlashsaleApp, Pipeline, RedisClients
from streams.settings import WorkerSettings
from streams.stock import agent as stock_agent

AGENTS = {"stock": stock_agent.register, "counters": counters_agent.register}


def _topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=partitions)


def create_app(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> Pipeline:
    app = FlashsaleApp(settings.app_id, **settings.faust_options())
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    names = TopicNames(settings.topic_prefix)
    if settings.coalesce_run:
        # the agents' input topics: every reader of them expands runs (streams.batching.records_of)
        app.coalesce_topics = frozenset((names.orders, names.engagement, names.decisions))
        app.coalesce_max_records = settings.coalesce_run
    parts = {k: (settings.partitions if v > 1 else v) for k, v in DEFAULT_PARTITIONS.items()}
    # Started and stopped with the app (a child service); agents stop before it closes the clients.
    redis = RedisClients(settings)
    app.add_dependency(redis)
    pipeline = Pipeline(
        settings=settings, app=app, names=names, metrics=WorkerMetrics(registry), redis=redis,
        orders=_topic(app, names.orders, parts["orders"]),
        engagement=_topic(app, names.engagement, parts["engagement"]),
        decisions=_topic(app, names.decisions, parts["order-decisions"]),
        alerts=_topic(app, names.alerts, parts["alerts"]),
        dead_letter=_topic(app, names.dead_letter, parts["dead-letter"]),
    )
    register_all(pipeline)
    return pipeline


def register_all(pipeline: Pipeline) -> None:
    """Register the agents named in FLASHSALE_AGENTS (all by default) and the web pages."""
    for name in pipeline.settings.agents:
        AGENTS[name](pipeline)
    web.register(pipeline)
