"""Dashboard settings: one frozen, validated model read from FLASHSALE_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from kernel.settings import FlashsaleSettings
from schemas.events import CHANNELS

CHANNEL_CHOICES = CHANNELS  # every channel an event can carry, "other" (no channel named) included
Key = Annotated[SecretStr, Field(min_length=16)]


class DashboardSettings(FlashsaleSettings):
    host: str = Field("127.0.0.1", validation_alias="FLASHSALE_DASHBOARD_HOST", description="bind address")
    port: int = Field(8090, ge=0, le=65535, validation_alias="FLASHSALE_DASHBOARD_PORT", description="bind address")
    push_interval_s: float = Field(1.0, ge=0.05, le=1.0, validation_alias="FLASHSALE_DASHBOARD_PUSH_INTERVAL_S",
                                   description="live push period (≤ 1 s)")
    max_connections: int = Field(5000, ge=1, le=1_000_000, validation_alias="FLASHSALE_DASHBOARD_MAX_CONNECTIONS",
                                 description="live connections accepted")
    rooms_refresh_s: float = Field(5.0, ge=0.5, validation_alias="FLASHSALE_DASHBOARD_ROOMS_REFRESH_S",
                                   description="room list refresh")
    idle_room_grace_s: float = Field(5.0, ge=0, validation_alias="FLASHSALE_DASHBOARD_IDLE_ROOM_GRACE_S",
                                     description="keep computing a room this long after its last viewer leaves")
    currency: str = Field("CNY", validation_alias="FLASHSALE_DASHBOARD_CURRENCY",
                          description="currency shown for minor-unit amounts")
    key: Key | None = Field(None, validation_alias="FLASHSALE_DASHBOARD_KEY",
                            description="HMAC key of dashboard links, 16+ characters; unset = a random key per start")

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def get_settings(environ: Mapping[str, str] | None = None) -> DashboardSettings:
    """The dashboard's settings from ``environ`` (``os.environ`` by default); raises ConfigError."""
    return DashboardSettings.from_env(environ)
