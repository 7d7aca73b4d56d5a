"""Simulator settings: the publisher's settings plus a few simulator knobs, from FLASHSALE_* variables."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from kernel.settings import Flag
from producers.settings import PublisherSettings


class SimulatorSettings(PublisherSettings):
    """``partitions`` and ``auto_create_topics`` (shared) are used when the simulator creates missing topics."""

    speed: float = Field(1.0, ge=0.01, le=10_000, validation_alias="FLASHSALE_SIM_SPEED",
                         description="simulated seconds per wall second")
    feedback: Flag = Field(True, validation_alias="FLASHSALE_SIM_FEEDBACK",
                           description="read decisions and pay only accepted orders")
    feedback_grace_s: float = Field(10.0, ge=0.5, le=600, validation_alias="FLASHSALE_SIM_FEEDBACK_GRACE_S",
                                    description="fall back to optimistic payments after this long without "
                                                "decisions")


def get_settings(environ: Mapping[str, str] | None = None) -> SimulatorSettings:
    """The simulator's settings from ``environ`` (``os.environ`` by default); raises ConfigError."""
    return SimulatorSettings.from_env(environ)
