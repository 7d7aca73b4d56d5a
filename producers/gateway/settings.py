"""Gateway settings: the publisher's settings plus the HTTP server's, one frozen validated model."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pydantic import Field, SecretStr, field_validator

from kernel.settings import Flag
from producers.gateway.scopes import Scope, canonical, parse_entry, parse_scopes
from producers.settings import PublisherSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class GatewaySettings(PublisherSettings):
    host: str = Field("127.0.0.1", validation_alias="FLASHSALE_GATEWAY_HOST", description="bind address")
    port: int = Field(8080, ge=0, le=65535, validation_alias="FLASHSALE_GATEWAY_PORT", description="bind address")
    tokens: tuple[SecretStr, ...] = Field(
        (), validation_alias="FLASHSALE_GATEWAY_TOKEN",
        description="bearer token(s), comma-separated, 16+ characters, each `TOKEN` (engagement+orders) or "
                    "`TOKEN=scope+scope`; unset = no auth")
    anonymous_scopes: tuple[Scope, ...] = Field(
        ("engagement", "orders"), validation_alias="FLASHSALE_GATEWAY_ANONYMOUS_SCOPES",
        description="scopes of every caller when no token is set (control and payments need a token by default)")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1024 * 1024,
                                validation_alias="FLASHSALE_GATEWAY_MAX_BODY_BYTES",
                                description="larger bodies get 413")
    max_events: int = Field(10_000, ge=1, le=10_000, validation_alias="FLASHSALE_GATEWAY_MAX_EVENTS",
                            description="most events per request")
    rate_limit: float = Field(2000.0, ge=0, validation_alias="FLASHSALE_GATEWAY_RATE_LIMIT",
                              description="events/s per client (429 beyond); 0 = off")
    rate_burst: int = Field(default_factory=lambda data: max(1, int(data.get("rate_limit", 0) * 2)), ge=1,
                            validation_alias="FLASHSALE_GATEWAY_RATE_BURST",
                            description="events a client may send at once before the rate applies")
    decision_timeout_ms: int = Field(2000, ge=0, le=60_000, validation_alias="FLASHSALE_GATEWAY_DECISION_TIMEOUT_MS",
                                     description="wait for an order's decision before answering 202")
    body_timeout_s: float = Field(10.0, ge=0.1, le=600, validation_alias="FLASHSALE_GATEWAY_BODY_TIMEOUT_S",
                                  description="slow-client cut-off for the body")
    soldout_cache_ms: int = Field(100, ge=0, le=10_000, validation_alias="FLASHSALE_GATEWAY_SOLDOUT_CACHE_MS",
                                  description="how long the sold-out flag is cached")
    trusted_proxies: tuple[Network, ...] = Field(
        (), validation_alias="FLASHSALE_GATEWAY_TRUSTED_PROXIES",
        description="proxy addresses/CIDRs whose `X-Forwarded-For` is believed, comma-separated")
    trust_forwarded: Flag = Field(False, validation_alias="FLASHSALE_GATEWAY_TRUST_FORWARDED",
                                  description="deprecated: `true` = trust loopback proxies (127.0.0.0/8, ::1)")
    shutdown_timeout_s: float = Field(10.0, ge=0, le=600, validation_alias="FLASHSALE_GATEWAY_SHUTDOWN_TIMEOUT_S",
                                      description="grace for in-flight requests")
    coalesce_ms: float = Field(2.0, ge=0, le=1000, validation_alias="FLASHSALE_GATEWAY_COALESCE_MS",
                               description="how long an order waits for others of its SKU to share one Kafka record "
                                           "(0 = only orders that arrive together)")
    coalesce_events: int = Field(500, ge=1, le=10_000, validation_alias="FLASHSALE_GATEWAY_COALESCE_EVENTS",
                                 description="most orders per coalesced record; 1 = one record per order")
    coalesce_bytes: int = Field(262_144, ge=1024, le=1_000_000, validation_alias="FLASHSALE_GATEWAY_COALESCE_BYTES",
                                description="most bytes per coalesced record (and never more than "
                                            "`FLASHSALE_PRODUCER_BATCH_BYTES`)")
    redis_pool: int = Field(64, ge=1, le=10_000, validation_alias="FLASHSALE_GATEWAY_REDIS_POOL",
                            description="Redis connections per gateway process; when all are busy a request waits "
                                        "for one (up to the decision timeout) instead of failing")
    processes: int = Field(1, ge=1, le=256, validation_alias="FLASHSALE_GATEWAY_PROCESSES",
                           description="gateway processes sharing the port (SO_REUSEPORT), supervised by one parent "
                                       "(`--processes`)")
    reuse_port: Flag = Field(False, validation_alias="FLASHSALE_GATEWAY_REUSE_PORT",
                             description="bind with SO_REUSEPORT, so several gateways share the port (set for the "
                                         "children of `--processes`)")
    admission: Flag = Field(True, validation_alias="FLASHSALE_GATEWAY_ADMISSION",
                            description="answer 429 `units_in_flight` instead of publishing an order whose units are "
                                        "all spoken for by this process's orders in flight (docs/API.md)")

    @field_validator("tokens", mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # "tok1, tok2" from the environment
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("tokens")
    @classmethod
    def _token_syntax(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for entry in value:
            parse_entry(entry.get_secret_value())  # the error names the rule, never the token
        return value

    @field_validator("anonymous_scopes", mode="before")
    @classmethod
    def _scope_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return canonical(parse_scopes(value)) if value.strip() not in ("", "none") else ()
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in value.split(",") if p.strip())
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    def credentials(self) -> tuple[tuple[str, frozenset[str]], ...]:
        """(token in clear, scopes) per configured token, for the authenticator only (never log them)."""
        return tuple(parse_entry(t.get_secret_value()) for t in self.tokens)

    def token_values(self) -> tuple[str, ...]:
        """The bearer tokens in clear, without their scopes (never log them)."""
        return tuple(token for token, _ in self.credentials())

    def proxies(self) -> tuple[Network, ...]:
        """The networks whose X-Forwarded-For is believed (the deprecated flag adds loopback)."""
        return self.trusted_proxies + (LOOPBACK if self.trust_forwarded else ())


def get_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """The gateway's settings from ``environ`` (``os.environ`` by default); raises ConfigError."""
    return GatewaySettings.from_env(environ)
