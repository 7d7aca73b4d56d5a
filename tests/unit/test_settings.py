"""The settings models: the README table matches them, errors name the variable, overrides are validated."""

from __future__ import annotations

import re
from typing import Any

import pytest

from consumers.dashboard.settings import DashboardSettings
from kernel.settings import ConfigError, FlashsaleSettings
from producers.gateway.settings import GatewaySettings
from producers.settings import PublisherSettings
from producers.simulation.settings import SimulatorSettings
from streams.settings import WorkerSettings
from tests.unit.deploy.envnames import ROOT, settings_models

TOKEN = "t" * 20


def readme_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) per variable of README.md's settings table; ``A` / `_B`` rows split."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`FLASHSALE_"):
            continue
        names, defaults, _used_by, meaning = cells
        first, *more = [n.strip("` ") for n in names.split(" / ")]
        values = [d.strip() for d in defaults.split(" / ")]
        full = [first] + [first.rsplit("_", 1)[0] + suffix for suffix in more]
        assert len(values) == len(full), line
        rows += [(name, value, meaning) for name, value in zip(full, values, strict=True)]
    return rows


def fields_by_variable() -> dict[str, tuple[type[FlashsaleSettings], str]]:
    out: dict[str, tuple[type[FlashsaleSettings], str]] = {}
    for model in settings_models():
        for name, var in model.env_names().items():
            out.setdefault(var, (model, name))
    return out


def test_every_settings_model_is_found() -> None:
    assert {WorkerSettings, PublisherSettings, GatewaySettings, SimulatorSettings, DashboardSettings} <= set(
        settings_models())


def test_the_readme_table_lists_every_variable_once() -> None:
    documented = [name for name, _, _ in readme_rows()]
    assert len(documented) == len(set(documented)), "a variable documented twice"
    assert set(documented) == set(fields_by_variable()), (
        f"missing from README: {sorted(set(fields_by_variable()) - set(documented))}; "
        f"in README but read by no model: {sorted(set(documented) - set(fields_by_variable()))}")


@pytest.mark.parametrize(("var", "default", "meaning"), readme_rows(), ids=lambda v: str(v)[:40])
def test_the_readme_default_and_meaning_are_the_models(var: str, default: str, meaning: str) -> None:
    model, name = fields_by_variable()[var]
    field = model.model_fields[name]
    assert field.description == meaning, f"{var}: README says {meaning!r}, the model {field.description!r}"
    actual = getattr(model.from_env({}), name)
    if default == "unset":
        assert actual in (None, ()), var
    elif default == "2×rate":  # the gateway's burst: two seconds of the rate, whatever the rate
        assert actual == 2 * model.from_env({}).rate_limit  # type: ignore[attr-defined]
        assert getattr(model.from_env({"FLASHSALE_GATEWAY_RATE_LIMIT": "50"}), name) == 100
    else:
        literal = re.fullmatch(r"`([^`]*)`", default)
        assert literal, f"{var}: default {default!r} should be a `literal`, unset or 2×rate"
        # the documented default, read as the variable, is the default: `8` = 8.0, `none` = None, ...
        assert getattr(model.from_env({var: literal.group(1)}), name) == actual, var


def test_each_default_is_written_once() -> None:
    shared = set(FlashsaleSettings.model_fields)
    for model in settings_models():
        for name in shared:
            assert model.model_fields[name].default == FlashsaleSettings.model_fields[name].default, (model, name)
    for model in (GatewaySettings, SimulatorSettings):
        assert set(PublisherSettings.model_fields) <= set(model.model_fields)


@pytest.mark.parametrize(("env", "expected"), [
    ({"FLASHSALE_PARTITIONS": "abc"}, "FLASHSALE_PARTITIONS='abc': expected an integer"),
    ({"FLASHSALE_PARTITIONS": "0"}, "FLASHSALE_PARTITIONS='0': must be >= 1"),
    ({"FLASHSALE_PARTITIONS": "2000"}, "FLASHSALE_PARTITIONS='2000': must be <= 1024"),
    ({"FLASHSALE_SPIKE_FACTOR": "x"}, "FLASHSALE_SPIKE_FACTOR='x': expected a number"),
    ({"FLASHSALE_REDIS_CLUSTER": "maybe"}, "FLASHSALE_REDIS_CLUSTER='maybe': expected true or false"),
    ({"FLASHSALE_WORKER_PORT": "70000"}, "FLASHSALE_WORKER_PORT='70000': must be <= 65535"),
    ({"FLASHSALE_AGENTS": "stock,nope"}, "FLASHSALE_AGENTS='stock,nope': expected one of 'stock' or 'counters'"),
    ({"FLASHSALE_AGENTS": ","}, "FLASHSALE_AGENTS=',': must have at least 1 items"),
    ({"FLASHSALE_BROKER_URL": ";"}, "FLASHSALE_BROKER_URL=';': names no host"),
])
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        WorkerSettings.from_env(env)
    assert str(exc.value) == expected


def test_every_bad_value_is_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        GatewaySettings.from_env({"FLASHSALE_GATEWAY_PORT": "x", "FLASHSALE_GATEWAY_RATE_LIMIT": "-1"})
    assert str(exc.value) == ("FLASHSALE_GATEWAY_PORT='x': expected an integer; "
                              "FLASHSALE_GATEWAY_RATE_LIMIT='-1': must be >= 0")


def test_values_as_before() -> None:
    s = WorkerSettings.from_env({"FLASHSALE_BATCH_WITHIN_MS": "20", "FLASHSALE_AGENTS": " counters, counters ",
                                 "FLASHSALE_AUTO_CREATE_TOPICS": " OFF ", "FLASHSALE_PARTITIONS": " 12 ",
                                 "FLASHSALE_APP_ID": "", "FLASHSALE_FAULT_INJECT": "boom"})
    assert (s.batch_within_s, s.agents, s.auto_create_topics, s.partitions) == (0.02, ("counters",), False, 12)
    assert (s.app_id, s.fault_inject) == ("flashsale-worker", "boom")  # empty = unset
    assert WorkerSettings().batch_within_s == 0.005
    p = PublisherSettings.from_env({"FLASHSALE_PRODUCER_ACKS": "-1", "FLASHSALE_PRODUCER_COMPRESSION": "None"})
    assert (p.acks, p.compression) == ("all", None)


def test_secrets_stay_out_of_repr_and_errors() -> None:
    env = {"FLASHSALE_GATEWAY_TOKEN": f"{TOKEN},short-secret", "FLASHSALE_REDIS_URL": "redis://:pw123@r:6379/0"}
    with pytest.raises(ConfigError) as exc:
        GatewaySettings.from_env(env)
    assert str(exc.value) == "FLASHSALE_GATEWAY_TOKEN: must have at least 16 characters"
    s = GatewaySettings.from_env({**env, "FLASHSALE_GATEWAY_TOKEN": TOKEN})
    assert s.token_values() == (TOKEN,) and s.auth_enabled
    for text in (repr(s), str(s), repr(s.publisher)):
        assert TOKEN not in text and "pw123" not in text and "r:6379" in text
    assert s.redis_url == "redis://:pw123@r:6379/0"  # only hidden from display
    with pytest.raises(ConfigError) as exc:
        DashboardSettings.from_env({"FLASHSALE_REDIS_URL": "redis://:pw123@r:6379/0"}).updated({"port": "x"})
    assert "pw123" not in str(exc.value)


def test_settings_are_frozen() -> None:
    s = DashboardSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


def test_direct_construction_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSALE_PARTITIONS", "3")
    assert WorkerSettings().partitions == 8 and WorkerSettings(partitions=5).partitions == 5
    assert WorkerSettings.from_env().partitions == 3  # os.environ by default


def test_overrides_are_validated_like_the_environment() -> None:
    s = GatewaySettings.from_env({"FLASHSALE_GATEWAY_PORT": "9000", "FLASHSALE_GATEWAY_RATE_LIMIT": "10"})
    assert s.rate_burst == 20
    t = s.updated({"host": "0.0.0.0", "port": None, "rate_limit": 50})
    assert (t.host, t.port, t.rate_limit, t.rate_burst) == ("0.0.0.0", 9000, 50, 100)  # the burst follows the rate
    assert s.updated({"rate_burst": 7}).updated({"rate_limit": 1}).rate_burst == 7  # set: kept
    with pytest.raises(ConfigError, match=r"^--port=70000: must be <= 65535$"):
        s.updated({"port": 70000}, {"port": "--port"})
    with pytest.raises(ConfigError, match=r"^speed=0: must be >= 0.01$"):
        SimulatorSettings().updated({"speed": 0})


def test_views_and_equality() -> None:
    s = SimulatorSettings.from_env({"FLASHSALE_TOPIC_PREFIX": "x.", "FLASHSALE_PRODUCER_LINGER_MS": "1"})
    pub: Any = s.publisher
    assert type(pub) is PublisherSettings and (pub.topic_prefix, pub.linger_ms) == ("x.", 1)
    assert pub.publisher is pub
    assert WorkerSettings.from_env({}) == WorkerSettings() and hash(WorkerSettings()) == hash(WorkerSettings())
