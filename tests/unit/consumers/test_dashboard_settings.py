"""Dashboard settings from FLASHSALE_* variables, and the command line."""

from __future__ import annotations

import pytest

from consumers.dashboard.__main__ import main
from consumers.dashboard.settings import DashboardSettings, get_settings
from kernel.settings import ConfigError


def test_defaults() -> None:
    s = get_settings({})
    assert s == DashboardSettings()
    assert (s.host, s.port, s.push_interval_s) == ("127.0.0.1", 8090, 1.0)
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_environment_overrides() -> None:
    s = get_settings({
        "FLASHSALE_REDIS_URL": "redis://10.0.0.5:6380/2", "FLASHSALE_DASHBOARD_HOST": "0.0.0.0",
        "FLASHSALE_DASHBOARD_PORT": "9000", "FLASHSALE_DASHBOARD_PUSH_INTERVAL_S": "0.25",
        "FLASHSALE_DASHBOARD_MAX_CONNECTIONS": "300", "FLASHSALE_DASHBOARD_CURRENCY": "usd",
        "FLASHSALE_REDIS_CLUSTER": "true",
    })
    assert (s.redis_url, s.host, s.port, s.push_interval_s) == ("redis://10.0.0.5:6380/2", "0.0.0.0", 9000, 0.25)
    assert (s.max_connections, s.currency, s.redis_cluster) == (300, "USD", True)


@pytest.mark.parametrize("name,value", [
    ("DASHBOARD_PORT", "http"), ("DASHBOARD_PORT", "70000"),
    ("DASHBOARD_PUSH_INTERVAL_S", "2"),  # the page promises at least one push a second
    ("DASHBOARD_PUSH_INTERVAL_S", "0"), ("DASHBOARD_MAX_CONNECTIONS", "0"),
])
def test_bad_values_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"FLASHSALE_{name}"):
        get_settings({f"FLASHSALE_{name}": value})


def test_repr_hides_the_redis_password() -> None:
    s = get_settings({"FLASHSALE_REDIS_URL": "redis://:s3cret@redis.internal:6379/0"})
    assert "s3cret" not in repr(s)
    assert "redis.internal" in repr(s)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "FLASHSALE_DASHBOARD_PORT" in out and "--port" in out


def test_bad_environment_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLASHSALE_DASHBOARD_PORT", "nope")
    assert main([]) == 2
    assert "FLASHSALE_DASHBOARD_PORT" in capsys.readouterr().err


def test_bad_push_interval_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--push-interval", "5"]) == 2
    assert "push-interval" in capsys.readouterr().err
