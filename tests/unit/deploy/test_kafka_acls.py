"""deploy/kafka/acls.sh: the Kafka users and ACLs per role. The script is run with stand-ins for the two
Kafka CLI tools that record their arguments (nothing talks to a broker), and the grants it makes are
checked against what each role does."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.unit.deploy.envnames import ROOT

SCRIPT = ROOT / "deploy" / "kafka" / "acls.sh"
OUTPUTS = {"order-decisions", "alerts", "dead-letter"}
INPUTS = {"orders", "engagement"}
PASSWORDS = {f"{r}_PASSWORD": f"pw-{r.lower()}" for r in ("ADMIN", "WORKER", "GATEWAY", "PUBLISHER", "OPS")}


def run(tmp_path: Path, **env: str) -> tuple[list[list[str]], list[list[str]]]:
    log = tmp_path / "calls.log"
    for tool in ("kafka-configs.sh", "kafka-acls.sh"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s" "{tool}" >> "{log}"\nfor a in "$@"; do printf " %s" "$(printf %s "$a" '
                        f'| sed "s/ /_/g")" >> "{log}"; done\necho >> "{log}"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    full = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path), "BOOTSTRAP": "k:9092", "CONTROLLER": "k:9093",
            **PASSWORDS, **env}
    subprocess.run(["sh", str(SCRIPT)], env=full, check=True, capture_output=True, timeout=30)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    return [c for c in calls if c[0] == "kafka-configs.sh"], [c for c in calls if c[0] == "kafka-acls.sh"]


def grants(acl_calls: list[list[str]]) -> set[tuple[str, str, str, str]]:
    """(principal, operation, resource kind, resource name) for every --add."""
    out = set()
    for call in acl_calls:
        assert "--add" in call and "--command-config" in call
        principal = call[call.index("--allow-principal") + 1].removeprefix("User:")
        ops = [call[i + 1] for i, a in enumerate(call) if a == "--operation"]
        if "--topic" in call:
            res = ("topic", call[call.index("--topic") + 1])
        elif "--group" in call:
            res = ("group", call[call.index("--group") + 1])
        else:
            assert "--cluster" in call
            res = ("cluster", "")
        out |= {(principal, op, *res) for op in ops}
    return out


def test_one_scram_user_per_role(tmp_path: Path) -> None:
    users, _ = run(tmp_path)
    made = {c[c.index("--entity-name") + 1]: c[c.index("--add-config") + 1] for c in users}
    assert set(made) == {"admin", "worker", "gateway", "publisher", "ops"}
    for name, config in made.items():
        assert config.startswith("SCRAM-SHA-512=[") and f"password=pw-{name}]" in config
    assert all(c[c.index("--bootstrap-controller") + 1] == "k:9093" for c in users)


def test_only_workers_write_the_outputs(tmp_path: Path) -> None:
    _, acls = run(tmp_path)
    g = grants(acls)
    writers = {(p, name) for p, op, kind, name in g if op == "Write" and kind == "topic"}
    assert {p for p, name in writers if name.removeprefix("flashsale.") in OUTPUTS} == {"worker"}
    assert {name for p, name in writers if p == "worker"} == {f"flashsale.{t}" for t in OUTPUTS} | {"flashsale-worker"}
    for who in ("gateway", "publisher"):
        assert {n for p, n in writers if p == who} == {f"flashsale.{t}" for t in INPUTS}
        assert (who, "Read", "topic", "flashsale.order-decisions") in g
        assert not any(p == who and kind == "group" for p, _, kind, _ in g)  # the waiter assigns, no group
    assert not any(p == "ops" and op == "Write" for p, op, _, _ in g)
    assert {p for p, *_ in g} == {"worker", "gateway", "publisher", "ops"}  # the dashboard needs no Kafka


def test_prefix_and_app_id_are_honoured(tmp_path: Path) -> None:
    _, acls = run(tmp_path, PREFIX="shop7.", APP_ID="shop7-worker")
    g = grants(acls)
    assert ("worker", "Write", "topic", "shop7.order-decisions") in g
    assert ("worker", "Read", "group", "shop7-worker") in g
    assert not any("flashsale" in name for *_, name in g)


@pytest.mark.parametrize("missing", ["BOOTSTRAP", "WORKER_PASSWORD"])
def test_it_refuses_to_run_without_what_it_needs(tmp_path: Path, missing: str) -> None:
    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path), "BOOTSTRAP": "k:9092", "CONTROLLER": "k:9093",
           **PASSWORDS}
    del env[missing]
    res = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and missing in res.stderr
