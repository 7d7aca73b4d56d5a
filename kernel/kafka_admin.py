"""Create the pipeline's topics (idempotently) with aiokafka's admin client."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from kernel.kafka_auth import KafkaAuth
from schemas.topics import DEFAULT_PARTITIONS, TopicNames

logger = logging.getLogger(__name__)


async def ensure_topics(bootstrap: str, prefix: str, partitions: int = 8, replication: int = 1,
                        kafka_auth: KafkaAuth | None = None) -> dict[str, str]:
    """Create every pipeline topic under ``prefix`` that does not exist yet; return logical → name."""
    names = TopicNames(prefix).all()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                **(kafka_auth.aiokafka_kwargs() if kafka_auth is not None else {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(name, partitions if DEFAULT_PARTITIONS[logical] > 1 else 1, replication)
               for logical, name in names.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            logger.info("created topics %s", ", ".join(t.name for t in new))
    finally:
        await admin.close()
    return names
