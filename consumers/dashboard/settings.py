"""Dashboard settings: one frozen object read from FLASHSALE_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kernel.env import Env

CHANNEL_CHOICES = ("live_room", "community_group", "mini_program", "share_link")


@dataclass(frozen=True)
class DashboardSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    host: str = "127.0.0.1"
    port: int = 8090
    push_interval_s: float = 1.0
    max_connections: int = 5000
    rooms_refresh_s: float = 5.0
    idle_room_grace_s: float = 5.0
    currency: str = "CNY"
    log_level: str = "info"

    def __repr__(self) -> str:
        # The Redis URL may carry a password: show only where it points.
        where = self.redis_url.rsplit("@", 1)[-1]
        return (f"DashboardSettings(redis=…{where}, host={self.host!r}, port={self.port}, "
                f"push_interval_s={self.push_interval_s}, max_connections={self.max_connections})")


def get_settings(environ: Mapping[str, str] | None = None) -> DashboardSettings:
    env = Env(environ)
    d = DashboardSettings
    return DashboardSettings(
        redis_url=env.str("REDIS_URL", d.redis_url),
        redis_cluster=env.bool("REDIS_CLUSTER", False),
        host=env.str("DASHBOARD_HOST", d.host),
        port=env.int("DASHBOARD_PORT", d.port, min=0, max=65535),
        push_interval_s=env.float("DASHBOARD_PUSH_INTERVAL_S", d.push_interval_s, min=0.05, max=1.0),
        max_connections=env.int("DASHBOARD_MAX_CONNECTIONS", d.max_connections, min=1, max=1_000_000),
        rooms_refresh_s=env.float("DASHBOARD_ROOMS_REFRESH_S", d.rooms_refresh_s, min=0.5),
        idle_room_grace_s=env.float("DASHBOARD_IDLE_ROOM_GRACE_S", d.idle_room_grace_s, min=0),
        currency=env.str("DASHBOARD_CURRENCY", d.currency).upper(),
        log_level=env.str("LOG_LEVEL", d.log_level),
    )
