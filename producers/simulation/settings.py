"""Simulator settings: the publisher's settings plus a few simulator knobs, from FLASHSALE_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kernel.env import Env
from producers.settings import PublisherSettings
from producers.settings import get_settings as publisher_settings


@dataclass(frozen=True)
class SimulatorSettings:
    publisher: PublisherSettings = field(default_factory=PublisherSettings)
    partitions: int = 8  # used when the simulator creates missing topics
    create_topics: bool = True
    speed: float = 1.0
    feedback: bool = True  # read decisions and pay for accepted orders; else pay optimistically
    feedback_grace_s: float = 10.0


def get_settings(environ: Mapping[str, str] | None = None) -> SimulatorSettings:
    env = Env(environ)
    return SimulatorSettings(
        publisher=publisher_settings(environ),
        partitions=env.int("PARTITIONS", SimulatorSettings.partitions, min=1, max=1024),
        create_topics=env.bool("AUTO_CREATE_TOPICS", SimulatorSettings.create_topics),
        speed=env.float("SIM_SPEED", SimulatorSettings.speed, min=0.01, max=10_000),
        feedback=env.bool("SIM_FEEDBACK", SimulatorSettings.feedback),
        feedback_grace_s=env.float("SIM_FEEDBACK_GRACE_S", SimulatorSettings.feedback_grace_s, min=0.5, max=600),
    )
