"""The worker's web pages (streams.web) on a Faust app that is never started, served by aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from schemas.topics import TopicNames
from streams import web
from streams.metrics import WorkerMetrics
from streams.pipeline import FlashsaleApp, Pipeline, RedisClients
from streams.settings import WorkerSettings, get_settings


@dataclass
class WebWorker:
    pipeline: Pipeline
    health: web.Health
    client: TestClient


def _pipeline(settings: WorkerSettings) -> Pipeline:
    # Only the web module is registered: the page code must not need the agents.
    app = FlashsaleApp(settings.app_id, **settings.faust_options())
    return Pipeline(settings=settings, app=app, names=TopicNames(settings.topic_prefix),
                    metrics=WorkerMetrics(CollectorRegistry()), redis=RedisClients(settings), orders=None,
                    engagement=None, decisions=None, alerts=None, dead_letter=None)


async def web_worker(redis_url: str) -> AsyncIterator[WebWorker]:
    """The pages of a worker whose Redis is ``redis_url``; the client and the Redis clients are closed after."""
    settings = get_settings({"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_TOPIC_PREFIX": "unit.",
                             "FLASHSALE_APP_ID": "unit-web"})
    pipeline = _pipeline(settings)
    health = web.install(pipeline)
    client = TestClient(TestServer(pipeline.app.web.web_app))
    await client.start_server()
    try:
        yield WebWorker(pipeline, health, client)
    finally:
        await client.close()
        await pipeline.redis.stop()


def sample(pipeline: Pipeline, name: str, labels: dict[str, str] | None = None) -> float | None:
    return pipeline.metrics.registry.get_sample_value(name, labels or {})
