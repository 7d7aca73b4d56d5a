"""deploy/k8s: every manifest validates offline against the Kubernetes schemas (kubernetes-validate, strict),
and probes, ports, commands and FLASHSALE_* variables agree with the code."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from flashsale.cli import COMMANDS
from tests.unit.deploy.envnames import ROOT, read_by_code, used_in

K8S = ROOT / "deploy" / "k8s"
KUBE_VERSION = "1.30"  # oldest version we promise; every API used here is GA there
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in load(p)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in all_docs() if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the process sees: the ConfigMap and Secrets it loads, then its own env entries."""
    c = container(deployment)
    env: dict[str, str] = {}
    configmaps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_validates_strictly(path: Path) -> None:
    docs = load(path)
    assert docs
    for doc in docs:
        kv.validate(doc, KUBE_VERSION, strict=True)  # raises ValidationError with the path of the problem


@pytest.mark.parametrize("breakage", ["misspelt field", "probe without port"])
def test_the_validator_catches_mistakes(breakage: str) -> None:
    deployment = copy.deepcopy(by_kind("Deployment")["flashsale-worker"])
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "misspelt field":
        c["readinesProbe"] = c.pop("readinessProbe")
    else:
        c["readinessProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert kustomization["namespace"] == "flashsale"
    assert any(d["kind"] == "Namespace" and d["metadata"]["name"] == "flashsale" for d in all_docs())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (optional) renders the kustomization")
def test_kustomize_renders_and_the_output_validates() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(all_docs())
    for doc in docs:
        kv.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "flashsale"


def test_there_is_a_deployment_per_process_with_probes_on_the_health_pages() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {"flashsale-worker", "flashsale-gateway", "flashsale-dashboard"}
    for name, d in deployments.items():
        c = container(d)
        assert c["args"][0] in COMMANDS, name
        assert c["args"][0] == name.removeprefix("flashsale-")
        port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] in port_names, f"{name} {probe}"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
        assert "memory" in c["resources"]["limits"], name
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) in port_names.values()
        assert annotations["prometheus.io/path"] == "/metrics"


def test_ports_and_bind_addresses_match_the_settings() -> None:
    from consumers.dashboard.settings import get_settings as dashboard_settings
    from producers.gateway.settings import get_settings as gateway_settings
    from streams.settings import get_settings as worker_settings

    deployments = by_kind("Deployment")
    loaders = {"flashsale-worker": (worker_settings, "web_host", "web_port"),
               "flashsale-gateway": (gateway_settings, "host", "port"),
               "flashsale-dashboard": (dashboard_settings, "host", "port")}
    for name, (get_settings, host_attr, port_attr) in loaders.items():
        d = deployments[name]
        settings = get_settings(container_env(d))  # the process would start with this environment
        assert getattr(settings, host_attr) == "0.0.0.0", f"{name} must listen on all pod addresses"
        assert [p["containerPort"] for p in container(d)["ports"]] == [getattr(settings, port_attr)], name


def test_services_and_budgets_select_their_pods() -> None:
    deployments = by_kind("Deployment")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in by_kind(kind).items():
            d = deployments[name]
            pod_labels = d["spec"]["template"]["metadata"]["labels"]
            selector = obj["spec"]["selector"] if kind == "Service" else obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod_labels.items(), f"{kind} {name}"
            if kind == "Service":
                names = {p["name"] for p in container(d)["ports"]}
                assert all(p["targetPort"] in names for p in obj["spec"]["ports"]), name
    assert set(by_kind("Service")) == set(deployments)
    assert {"flashsale-worker", "flashsale-gateway"} <= set(by_kind("PodDisruptionBudget"))


def test_autoscalers_target_deployments_and_workers_stop_at_the_partition_count() -> None:
    deployments = by_kind("Deployment")
    hpas = by_kind("HorizontalPodAutoscaler")
    assert {"flashsale-worker", "flashsale-gateway"} <= set(hpas)
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, name
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    partitions = int(by_kind("ConfigMap")["flashsale-config"]["data"]["FLASHSALE_PARTITIONS"])
    assert hpas["flashsale-worker"]["spec"]["maxReplicas"] <= partitions  # more would sit idle


def test_gateway_token_comes_from_the_secret_only() -> None:
    assert "FLASHSALE_GATEWAY_TOKEN" not in by_kind("ConfigMap")["flashsale-config"]["data"]
    gateway = container(by_kind("Deployment")["flashsale-gateway"])
    assert {"secretRef": {"name": "flashsale-gateway"}} in gateway["envFrom"]
    assert "FLASHSALE_GATEWAY_TOKEN" in by_kind("Secret")["flashsale-gateway"]["stringData"]
    for name in ("flashsale-worker", "flashsale-dashboard"):
        assert "FLASHSALE_GATEWAY_TOKEN" not in container_env(by_kind("Deployment")[name])


def test_the_output_signing_key_comes_from_its_secret_to_workers_and_the_gateway_only() -> None:
    assert "FLASHSALE_OUTPUT_SIGNING_KEY" not in by_kind("ConfigMap")["flashsale-config"]["data"]
    assert len(by_kind("Secret")["flashsale-output-signing"]["stringData"]["FLASHSALE_OUTPUT_SIGNING_KEY"]) >= 32
    for name in ("flashsale-worker", "flashsale-gateway"):
        assert {"secretRef": {"name": "flashsale-output-signing"}} in container(by_kind("Deployment")[name])["envFrom"]
        assert "FLASHSALE_OUTPUT_SIGNING_KEY" in container_env(by_kind("Deployment")[name])


def test_every_flashsale_variable_in_the_manifests_is_read_by_the_code() -> None:
    known = read_by_code()
    assert {"FLASHSALE_BROKER_URL", "FLASHSALE_REDIS_URL", "FLASHSALE_WORKER_PORT"} <= known  # the scan works
    used = set().union(*(used_in(p.read_text()) for p in MANIFESTS))
    assert used, "no FLASHSALE_* variable in the manifests?"
    assert used <= known, f"set in deploy/k8s but read by no settings module: {sorted(used - known)}"


def test_each_kafka_client_reads_only_its_own_roles_credentials() -> None:
    from kernel.settings import FlashsaleSettings

    secrets = by_kind("Secret")
    config = by_kind("ConfigMap")["flashsale-config"]["data"]
    assert not any(k.startswith("FLASHSALE_KAFKA_") for k in config)  # credentials never in the ConfigMap
    for role in ("worker", "gateway"):
        deployment = container(by_kind("Deployment")[f"flashsale-{role}"])
        refs = {r["secretRef"]["name"] for r in deployment["envFrom"] if "secretRef" in r}
        assert {n for n in refs if n.startswith("flashsale-kafka-")} == {f"flashsale-kafka-{role}"}
        data = secrets[f"flashsale-kafka-{role}"]["stringData"]
        auth = FlashsaleSettings.from_env({**config, **data}).kafka_auth
        assert auth.sasl and auth.username == role
    dashboard = container(by_kind("Deployment")["flashsale-dashboard"])
    assert not any(r.get("secretRef", {}).get("name", "").startswith("flashsale-kafka-")
                   for r in dashboard["envFrom"])
