"""Publisher (SDK) settings: one frozen, validated model read from FLASHSALE_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from kernel.settings import Flag, FlashsaleSettings

Compression = Literal["gzip", "lz4", "zstd", "snappy"]


class PublisherSettings(FlashsaleSettings):
    acks: Literal["all", "0", "1"] = Field("all", validation_alias="FLASHSALE_PRODUCER_ACKS",
                                           description="`all`, `1` or `0`")
    linger_ms: int = Field(5, ge=0, le=60_000, validation_alias="FLASHSALE_PRODUCER_LINGER_MS",
                           description="producer linger")
    compression: Compression | None = Field(None, validation_alias="FLASHSALE_PRODUCER_COMPRESSION",
                                            description="`none`, `gzip`, `lz4`, `zstd`, `snappy`")
    # Tansu cannot (InitProducerId fails); enable on real Kafka
    idempotence: Flag = Field(False, validation_alias="FLASHSALE_PRODUCER_IDEMPOTENCE",
                              description="idempotent producer (real Kafka yes; Tansu cannot)")
    batch_events: int = Field(500, ge=1, le=10_000, validation_alias="FLASHSALE_PRODUCER_BATCH_EVENTS",
                              description="most events per batched record; 1 = no batching")
    batch_bytes: int = Field(900_000, ge=1024, le=100_000_000, validation_alias="FLASHSALE_PRODUCER_BATCH_BYTES",
                             description="most bytes per batched record")
    timeout_ms: int = Field(10_000, ge=100, le=600_000, validation_alias="FLASHSALE_PRODUCER_TIMEOUT_MS",
                            description="connect and request timeout")

    @field_validator("acks", mode="before")
    @classmethod
    def _acks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return "all" if value == "-1" else value
        return value

    @field_validator("compression", mode="before")
    @classmethod
    def _compression(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return None if value == "none" else value
        return value

    @property
    def publisher(self) -> PublisherSettings:
        """Just the publisher's part (the gateway's and the simulator's settings extend it)."""
        if type(self) is PublisherSettings:
            return self
        return PublisherSettings(**self.model_dump(include=set(PublisherSettings.model_fields)))


def get_settings(environ: Mapping[str, str] | None = None) -> PublisherSettings:
    """The SDK's settings from ``environ`` (``os.environ`` by default); raises ConfigError."""
    return PublisherSettings.from_env(environ)
