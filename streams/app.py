"""The Faust app: declarations only. ``create_app(settings)`` builds it; nothing runs at import."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from schemas.topics import DEFAULT_PARTITIONS, TopicNames
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings

logger = logging.getLogger(__name__)


class FlashsaleApp(faust.App):
    """faust.App plus the consumer fetch wait our transport reads (see streams.transport)."""

    fetch_max_wait_ms: int = 50


@dataclass
class Pipeline:
    """What agents need: settings, the app's topics, metrics; Redis gateways are made lazily."""

    settings: WorkerSettings
    app: FlashsaleApp
    names: TopicNames
    metrics: WorkerMetrics
    orders: Any
    engagement: Any
    decisions: Any
    alerts: Any
    dead_letter: Any

    async def send(self, logical: str, key: bytes, value: bytes) -> Any:
        """Produce to a pipeline topic; returns a future resolved when the broker acknowledges."""
        topic = {"order-decisions": self.decisions, "alerts": self.alerts, "dead-letter": self.dead_letter,
                 "orders": self.orders, "engagement": self.engagement}[logical]
        return await topic.send(key=key, value=value)


def _topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=partitions)


def create_app(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> Pipeline:
    app = FlashsaleApp(settings.app_id, **settings.faust_options())
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    names = TopicNames(settings.topic_prefix)
    parts = {k: (settings.partitions if v > 1 else v) for k, v in DEFAULT_PARTITIONS.items()}
    pipeline = Pipeline(
        settings=settings, app=app, names=names, metrics=WorkerMetrics(registry),
        orders=_topic(app, names.orders, parts["orders"]),
        engagement=_topic(app, names.engagement, parts["engagement"]),
        decisions=_topic(app, names.decisions, parts["order-decisions"]),
        alerts=_topic(app, names.alerts, parts["alerts"]),
        dead_letter=_topic(app, names.dead_letter, parts["dead-letter"]),
    )
    from streams.agents import register_all

    register_all(pipeline)
    return pipeline
