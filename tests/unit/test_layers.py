"""The layer contracts in pyproject.toml hold, and lint-imports fails when an upward import is planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "bench > flashsale > streams | producers | consumers (independent) > kernel > schemas"
SCHEMAS_PURE = "schemas is the contract only: no I/O or framework libraries"
STREAMS_LAYERS = "streams: app > stock | counters | web > pipeline"


def copy_project(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def plant(project: Path, module: str, line: str) -> None:
    path = project / module
    path.write_text(path.read_text() + f"\n{line}  # planted by test_layers\n")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy, not the installed checkout, is what grimp must find.
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "400"}  # rich wraps long contract names
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=180)


def test_the_unplanted_copy_keeps_every_contract(tmp_path: Path) -> None:
    out = lint_imports(copy_project(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and f"{LAYERS} KEPT" in out.stdout


@pytest.mark.parametrize(("module", "line", "contract", "importer", "imported"), [
    ("schemas/topics.py", "import streams", LAYERS, "schemas.topics", "streams"),
    ("streams/emit.py", "import producers", LAYERS, "streams.emit", "producers"),
    ("kernel/clock.py", "from consumers import readmodel", LAYERS, "kernel.clock", "consumers.readmodel"),
    ("schemas/keys.py", "import redis", SCHEMAS_PURE, "schemas.keys", "redis"),
    ("streams/stock/logic.py", "from streams.counters import rollups", STREAMS_LAYERS, "streams.stock.logic",
     "streams.counters.rollups"),
    ("streams/pipeline.py", "from streams.stock import agent", STREAMS_LAYERS, "streams.pipeline",
     "streams.stock.agent"),
], ids=["schemas-imports-streams", "streams-imports-producers", "kernel-imports-consumers", "schemas-imports-redis",
        "stock-imports-counters", "pipeline-imports-an-agent"])
def test_a_planted_upward_import_breaks_the_contract(tmp_path: Path, module: str, line: str, contract: str,
                                                     importer: str, imported: str) -> None:
    project = copy_project(tmp_path)
    plant(project, module, line)
    out = lint_imports(project)
    assert out.returncode != 0, out.stdout
    assert f"{contract} BROKEN" in out.stdout, out.stdout
    assert importer in out.stdout and imported in out.stdout, out.stdout
