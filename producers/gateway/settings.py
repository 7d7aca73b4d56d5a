"""Gateway settings: one frozen object read from FLASHSALE_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kernel.env import ConfigError, Env
from producers.settings import PublisherSettings
from producers.settings import get_settings as get_publisher_settings


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: tuple[str, ...] = field(default=(), repr=False)  # bearer tokens; empty = no auth
    max_body_bytes: int = 1_048_576
    max_events: int = 10_000  # per request
    rate_limit: float = 2000.0  # events/s per client; 0 = unlimited
    rate_burst: int = 4000
    decision_timeout_ms: int = 2000
    body_timeout_s: float = 10.0
    soldout_cache_ms: int = 100
    trust_forwarded: bool = False
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    redis_cluster: bool = False
    auto_create_topics: bool = True
    partitions: int = 8
    replication: int = 1
    shutdown_timeout_s: float = 10.0
    log_level: str = "info"
    publisher: PublisherSettings = field(default_factory=PublisherSettings)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)


def parse_tokens(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    tokens = tuple(t.strip() for t in value.split(",") if t.strip())
    if any(len(t) < 16 for t in tokens):
        raise ConfigError("FLASHSALE_GATEWAY_TOKEN: every token must be at least 16 characters")
    return tokens


def get_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    env = Env(environ)
    d = GatewaySettings
    rate = env.float("GATEWAY_RATE_LIMIT", d.rate_limit, min=0)
    return GatewaySettings(
        host=env.str("GATEWAY_HOST", d.host),
        port=env.int("GATEWAY_PORT", d.port, min=0, max=65535),
        tokens=parse_tokens(env.opt_str("GATEWAY_TOKEN")),
        max_body_bytes=env.int("GATEWAY_MAX_BODY_BYTES", d.max_body_bytes, min=1024, max=64 * 1024 * 1024),
        max_events=env.int("GATEWAY_MAX_EVENTS", d.max_events, min=1, max=10_000),
        rate_limit=rate,
        rate_burst=env.int("GATEWAY_RATE_BURST", max(1, int(rate * 2)), min=1),  # default: 2 s of rate
        decision_timeout_ms=env.int("GATEWAY_DECISION_TIMEOUT_MS", d.decision_timeout_ms, min=0, max=60_000),
        body_timeout_s=env.float("GATEWAY_BODY_TIMEOUT_S", d.body_timeout_s, min=0.1, max=600),
        soldout_cache_ms=env.int("GATEWAY_SOLDOUT_CACHE_MS", d.soldout_cache_ms, min=0, max=10_000),
        trust_forwarded=env.bool("GATEWAY_TRUST_FORWARDED", d.trust_forwarded),
        redis_url=env.str("REDIS_URL", d.redis_url),
        redis_cluster=env.bool("REDIS_CLUSTER", d.redis_cluster),
        auto_create_topics=env.bool("AUTO_CREATE_TOPICS", d.auto_create_topics),
        partitions=env.int("PARTITIONS", d.partitions, min=1, max=1024),
        replication=env.int("REPLICATION", d.replication, min=1, max=10),
        shutdown_timeout_s=env.float("GATEWAY_SHUTDOWN_TIMEOUT_S", d.shutdown_timeout_s, min=0, max=600),
        log_level=env.str("LOG_LEVEL", d.log_level),
        publisher=get_publisher_settings(environ),
    )
