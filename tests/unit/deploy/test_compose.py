"""deploy/compose.yaml: structure of the production-like stack (KRaft quorum, replication, AOF, workers),
and agreement with the code and the Prometheus/Grafana files. Parsed offline; nothing is started."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from typing import Any

import pytest
import yaml

from flashsale.cli import COMMANDS
from producers.gateway.settings import get_settings as gateway_settings
from streams.settings import get_settings as worker_settings
from tests.unit.deploy.envnames import ROOT, read_by_code, used_in

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")
TEST_TOKEN = "t" * 32
TEST_SIGNING_KEY = "s" * 40
KAFKA_ROLES = ("ADMIN", "WORKER", "GATEWAY", "PUBLISHER", "OPS")
TEST_SECRETS = {"FLASHSALE_GATEWAY_TOKEN": TEST_TOKEN, "FLASHSALE_OUTPUT_SIGNING_KEY": TEST_SIGNING_KEY,
                **{f"KAFKA_{role}_PASSWORD": f"kafka-{role.lower()}-pw" for role in KAFKA_ROLES}}


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, for the values the tests look at."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, dash, default, qmark, error = m.groups()
        if name in environ:
            return environ[name]
        if qmark:
            raise KeyError(f"{name} is required: {error}")
        return default if dash else ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def env_of(service: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = TEST_SECRETS if environ is None else environ
    return {k: str(interpolate(v, environ)) for k, v in (service.get("environment") or {}).items()}


def kafka_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The brokers (the kafka-acls job runs the same image, but is no broker)."""
    return {n: s for n, s in compose["services"].items()
            if "kafka" in str(s.get("image", "")) and "KAFKA_NODE_ID" in (s.get("environment") or {})}


def test_three_kraft_nodes_form_one_quorum(compose: dict[str, Any]) -> None:
    brokers = kafka_services(compose)
    assert len(brokers) == 3
    assert "zookeeper" not in COMPOSE.read_text().lower()
    node_ids, cluster_ids, voters = {}, set(), set()
    for name, svc in brokers.items():
        assert svc["image"].startswith("apache/kafka:")
        env = env_of(svc)
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        node_ids[int(env["KAFKA_NODE_ID"])] = svc["hostname"]
        cluster_ids.add(env["CLUSTER_ID"])
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"CLIENT://{svc['hostname']}:9092"
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        data_volume = [v for v in svc["volumes"] if v.endswith(":" + env["KAFKA_LOG_DIRS"])]
        assert data_volume and data_volume[0].split(":")[0] in compose["volumes"], name
        assert "healthcheck" in svc
    assert len(cluster_ids) == 1 and len(voters) == 1
    expected = {f"{i}@{host}:9093" for i, host in node_ids.items()}
    assert set(voters.pop().split(",")) == expected
    assert sorted(node_ids) == [1, 2, 3]


def test_replication_3_with_min_isr_2_and_no_unclean_election(compose: dict[str, Any]) -> None:
    for svc in kafka_services(compose).values():
        env = env_of(svc)
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3  # consumer group offsets survive a node
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in ("topics", "worker", "gateway"):
        env = env_of(compose["services"][name])
        assert env["FLASHSALE_REPLICATION"] == "3", name  # topics the pipeline creates are replicated too
        if name != "worker":
            assert env["FLASHSALE_PRODUCER_ACKS"] == "all"


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] in ("everysec", "always")
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"  # evicting stock keys would corrupt stock
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])


def test_workers_scale_out_in_one_group(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert int(interpolate(worker["deploy"]["replicas"], {})) >= 2
    assert "container_name" not in worker and "ports" not in worker  # both would prevent replicas
    env = env_of(worker)
    assert "FLASHSALE_APP_ID" not in env  # every replica keeps the default group id: one group, shared partitions
    assert env["FLASHSALE_WORKER_HOST"] == "0.0.0.0"
    assert int(interpolate(worker["deploy"]["replicas"], {})) <= int(env["FLASHSALE_PARTITIONS"])
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])


def test_every_process_is_a_flashsale_command_with_settings_that_parse(compose: dict[str, Any]) -> None:
    from consumers.dashboard.settings import get_settings as dashboard_settings
    from producers.gateway.settings import get_settings as gateway_settings
    from streams.settings import get_settings as worker_settings

    services = compose["services"]
    for name in ("topics", "worker", "gateway", "dashboard"):
        assert services[name]["command"][0] in COMMANDS, name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    worker = worker_settings(env_of(services["worker"]))
    gateway = gateway_settings(env_of(services["gateway"]))
    dashboard = dashboard_settings(env_of(services["dashboard"]))
    assert (worker.web_host, gateway.host, dashboard.host) == ("0.0.0.0",) * 3
    assert worker.bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert gateway.auth_enabled
    assert gateway.publisher.idempotence  # real Kafka supports it

    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ports = {job["job_name"]: job["dns_sd_configs"][0] for job in prom["scrape_configs"] if "dns_sd_configs" in job}
    assert ports["flashsale-worker"]["names"] == ["worker"] and ports["flashsale-worker"]["port"] == worker.web_port
    assert ports["flashsale-gateway"]["names"] == ["gateway"] and ports["flashsale-gateway"]["port"] == gateway.port
    assert ports["flashsale-dashboard"]["names"] == ["dashboard"]
    assert ports["flashsale-dashboard"]["port"] == dashboard.port


@pytest.mark.parametrize("service", ["topics", "worker", "gateway", "dashboard"])
def test_the_command_a_service_runs_exists(compose: dict[str, Any], service: str) -> None:
    command = compose["services"][service]["command"][0]
    module = COMMANDS[command][0]
    assert importlib.util.find_spec(module) is not None, f"`flashsale {command}` needs the module {module}"


def test_the_gateway_refuses_to_start_without_a_token(compose: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="FLASHSALE_GATEWAY_TOKEN"):
        env_of(compose["services"]["gateway"], environ={k: v for k, v in TEST_SECRETS.items()
                                                        if k != "FLASHSALE_GATEWAY_TOKEN"})


@pytest.mark.parametrize("service", ["worker", "gateway"])
def test_workers_and_the_gateway_refuse_to_start_without_the_output_signing_key(compose: dict[str, Any],
                                                                                service: str) -> None:
    with pytest.raises(KeyError, match="FLASHSALE_OUTPUT_SIGNING_KEY"):
        env_of(compose["services"][service], environ={k: v for k, v in TEST_SECRETS.items()
                                                      if k != "FLASHSALE_OUTPUT_SIGNING_KEY"})
    keys = {name: get_settings(env_of(compose["services"][name])).output_keys
            for name, get_settings in (("worker", worker_settings), ("gateway", gateway_settings))}
    assert keys["worker"] is not None and keys["gateway"] is not None
    assert keys["worker"].signing_key_id == keys["gateway"].signing_key_id


def test_every_flashsale_variable_is_read_by_the_code() -> None:
    used = used_in(COMPOSE.read_text())
    assert "FLASHSALE_BROKER_URL" in used
    assert used - {"FLASHSALE_IMAGE", "FLASHSALE_WORKERS"} <= read_by_code(), \
        sorted(used - {"FLASHSALE_IMAGE", "FLASHSALE_WORKERS"} - read_by_code())


def test_dependencies_exist_and_order_the_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps:
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka-acls"]["condition"] == "service_completed_successfully"
    assert all(services["topics"]["depends_on"][k]["condition"] == "service_healthy" for k in kafka_services(compose))


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    mounts = [v for svc in compose["services"].values() for v in svc.get("volumes", []) if v.startswith("./")]
    assert mounts
    for mount in mounts:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount
    assert (ROOT / "deploy" / "Dockerfile").exists()


def test_dockerfile_installs_the_package_and_runs_flashsale() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert re.search(r'^ENTRYPOINT \["flashsale"\]', text, re.M)
    assert re.search(r"^USER \d+", text, re.M)  # not root
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for package in wheel["packages"]:  # every package of the wheel is copied into the build
        assert re.search(rf"^COPY {package} ", text, re.M), package


def test_kafka_authenticates_every_client_and_authorizes_by_acl(compose: dict[str, Any]) -> None:
    for svc in kafka_services(compose).values():
        env = env_of(svc)
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        advertised = env["KAFKA_ADVERTISED_LISTENERS"].split("://")[0]
        assert protocols[advertised] == "SASL_PLAINTEXT"  # what clients reach
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == advertised
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert 'password="kafka-admin-pw"' in env["KAFKA_LISTENER_NAME_CLIENT_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
        assert "ports" not in svc  # the PLAINTEXT controller listener is never published
    acls = compose["services"]["kafka-acls"]
    assert acls["volumes"] == ["./kafka/acls.sh:/acls.sh:ro"]
    assert set(env_of(acls)) >= {f"{role}_PASSWORD" for role in KAFKA_ROLES}


@pytest.mark.parametrize(("service", "user"), [("topics", "ops"), ("worker", "worker"), ("gateway", "gateway")])
def test_each_kafka_client_is_its_own_user(compose: dict[str, Any], service: str, user: str) -> None:
    from kernel.settings import FlashsaleSettings

    env = env_of(compose["services"][service])
    auth = FlashsaleSettings.from_env(env).kafka_auth
    assert (auth.protocol, auth.mechanism, auth.username) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", user)
    assert auth.password is not None and auth.password.get_secret_value() == f"kafka-{user}-pw"
    with pytest.raises(KeyError, match=f"KAFKA_{user.upper()}_PASSWORD"):
        env_of(compose["services"][service], environ={k: v for k, v in TEST_SECRETS.items()
                                                      if k != f"KAFKA_{user.upper()}_PASSWORD"})


def test_the_dashboard_has_no_kafka_user(compose: dict[str, Any]) -> None:
    assert not any(k.startswith("FLASHSALE_KAFKA_USERNAME") for k in env_of(compose["services"]["dashboard"]))
