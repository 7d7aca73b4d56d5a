"""Gateway settings: the publisher's settings plus the HTTP server's, one frozen validated model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from kernel.settings import Flag
from producers.settings import PublisherSettings

Token = Annotated[SecretStr, Field(min_length=16)]


class GatewaySettings(PublisherSettings):
    host: str = Field("127.0.0.1", validation_alias="FLASHSALE_GATEWAY_HOST", description="bind address")
    port: int = Field(8080, ge=0, le=65535, validation_alias="FLASHSALE_GATEWAY_PORT", description="bind address")
    tokens: tuple[Token, ...] = Field((), validation_alias="FLASHSALE_GATEWAY_TOKEN",
                                      description="bearer token(s), comma-separated, 16+ characters; unset = no auth")
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
    trust_forwarded: Flag = Field(False, validation_alias="FLASHSALE_GATEWAY_TRUST_FORWARDED",
                                  description="rate-limit by `X-Forwarded-For` (behind a proxy)")
    shutdown_timeout_s: float = Field(10.0, ge=0, le=600, validation_alias="FLASHSALE_GATEWAY_SHUTDOWN_TIMEOUT_S",
                                      description="grace for in-flight requests")

    @field_validator("tokens", mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # "tok1, tok2" from the environment
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    def token_values(self) -> tuple[str, ...]:
        """The bearer tokens in clear, for the authenticator only (never log them)."""
        return tuple(t.get_secret_value() for t in self.tokens)


def get_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """The gateway's settings from ``environ`` (``os.environ`` by default); raises ConfigError."""
    return GatewaySettings.from_env(environ)
