"""Publisher (SDK) settings: one frozen object read from FLASHSALE_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kernel.env import ConfigError, Env, bootstrap_servers

COMPRESSIONS = ("none", "gzip", "lz4", "zstd", "snappy")
ACKS = ("all", "-1", "0", "1")


@dataclass(frozen=True)
class PublisherSettings:
    broker_url: str = "kafka://127.0.0.1:9092"
    topic_prefix: str = "flashsale."
    acks: str = "all"
    linger_ms: int = 5
    compression: str | None = None
    idempotence: bool = False  # Tansu cannot (InitProducerId fails); enable on real Kafka
    batch_events: int = 500
    batch_bytes: int = 900_000
    timeout_ms: int = 10_000
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    redis_cluster: bool = False

    @property
    def bootstrap(self) -> str:
        return bootstrap_servers(self.broker_url)


def parse_compression(value: str) -> str | None:
    low = value.strip().lower()
    if low not in COMPRESSIONS:
        raise ConfigError(f"FLASHSALE_PRODUCER_COMPRESSION={value!r}: expected one of {', '.join(COMPRESSIONS)}")
    return None if low == "none" else low


def get_settings(environ: Mapping[str, str] | None = None) -> PublisherSettings:
    env = Env(environ)
    acks = env.str("PRODUCER_ACKS", PublisherSettings.acks).strip().lower()
    if acks not in ACKS:
        raise ConfigError(f"FLASHSALE_PRODUCER_ACKS={acks!r}: expected one of {', '.join(ACKS)}")
    settings = PublisherSettings(
        broker_url=env.str("BROKER_URL", PublisherSettings.broker_url),
        topic_prefix=env.str("TOPIC_PREFIX", PublisherSettings.topic_prefix),
        acks="all" if acks == "-1" else acks,
        linger_ms=env.int("PRODUCER_LINGER_MS", PublisherSettings.linger_ms, min=0, max=60_000),
        compression=parse_compression(env.str("PRODUCER_COMPRESSION", "none")),
        idempotence=env.bool("PRODUCER_IDEMPOTENCE", PublisherSettings.idempotence),
        batch_events=env.int("PRODUCER_BATCH_EVENTS", PublisherSettings.batch_events, min=1, max=10_000),
        batch_bytes=env.int("PRODUCER_BATCH_BYTES", PublisherSettings.batch_bytes, min=1024, max=100_000_000),
        timeout_ms=env.int("PRODUCER_TIMEOUT_MS", PublisherSettings.timeout_ms, min=100, max=600_000),
        redis_url=env.str("REDIS_URL", PublisherSettings.redis_url),
        redis_cluster=env.bool("REDIS_CLUSTER", PublisherSettings.redis_cluster),
    )
    settings.bootstrap  # noqa: B018 - fail here, not at first use, on a URL without a host
    return settings
