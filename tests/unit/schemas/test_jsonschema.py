"""The generated JSON Schema files: committed = generated, faithful to the specs, and they validate."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import jsonschema as gen
from schemas.events import ENVELOPE_REQUIRED, PAYLOADS
from tests.unit.schemas.schema_samples import ERROR_CASES, Mutator, sample_dict

# Rules JSON Schema cannot state (see schemas/jsonschema.py); the Python validator still enforces them.
NOT_EXPRESSIBLE = {"float for int", "sale window reversed"}


def test_committed_files_equal_generated() -> None:
    assert gen.differences() == [], "schemas/json is stale: run python -m schemas.jsonschema"


def test_check_flag_detects_stale_missing_and_unexpected(tmp_path: Path) -> None:
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert gen.main(["--dir", str(tmp_path)]) == 0
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "order.placed.json").write_text("{}", encoding="utf-8")
    (tmp_path / "old.json").write_text("{}", encoding="utf-8")
    (tmp_path / "cart.added.json").unlink()
    assert sorted(gen.differences(tmp_path)) == ["missing cart.added.json", "stale order.placed.json",
                                                 "unexpected old.json"]
    gen.write(tmp_path)
    assert gen.differences(tmp_path) == []


def test_one_file_per_type_plus_union_and_record() -> None:
    assert set(gen.build()) == {f"{t}.json" for t in PAYLOADS} | {"event.json", "record.json"}


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_schema_mirrors_the_models(type_: str) -> None:
    schema = gen.build()[f"{type_}.json"]
    assert schema["required"] == list(ENVELOPE_REQUIRED)
    assert schema["properties"]["type"] == {"const": type_}
    cls = PAYLOADS[type_]
    [data] = schema["$defs"].values()
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    assert list(data["properties"]) == [f.name for f in info.fields]
    assert data.get("required", []) == [f.name for f in info.fields if f.required]
    assert data["additionalProperties"] is False and schema["additionalProperties"] is False
    for f in info.fields:
        prop = data["properties"][f.name]
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):  # X | None
            assert {"type": "null"} in prop["anyOf"]
            [t] = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
            [prop] = [x for x in prop["anyOf"] if x != {"type": "null"}]
        if isinstance(t, msgspec.inspect.Metadata):  # a type with a description
            assert prop["description"] == (t.extra_json_schema or {})["description"]
            t = t.type
        if isinstance(t, msgspec.inspect.IntType):
            assert prop["type"] == "integer" and (prop.get("minimum"), prop.get("maximum")) == (t.ge, t.le)
        elif isinstance(t, msgspec.inspect.StrType):
            assert prop["type"] == "string" and prop["maxLength"] == t.max_length
            assert prop.get("minLength") == t.min_length
        elif isinstance(t, msgspec.inspect.LiteralType):
            assert sorted(prop["enum"]) == sorted(t.values)
        elif isinstance(t, msgspec.inspect.BoolType):
            assert prop["type"] == "boolean"
        else:
            assert isinstance(t, msgspec.inspect.FloatType) and prop["type"] == "number"


def test_integers_fit_lua_and_javascript() -> None:
    """Every integer bound of the contract is below 10**14: cjson and JavaScript carry it exactly."""
    def walk(node: Any) -> list[int]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k in ("minimum", "maximum") and isinstance(v, int)]
            return found + [x for v in node.values() for x in walk(v)]
        return [x for v in node for x in walk(v)] if isinstance(node, list) else []
    bounds = walk(gen.build()["event.json"])
    assert bounds and max(abs(b) for b in bounds) < 10**14 <= 2**53


# --- real validation, with the jsonschema package when present (kubernetes-validate brings it) --------------


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    files = gen.build()
    registry = referencing.Registry().with_resources(
        (schema["$id"], referencing.Resource.from_contents(schema)) for schema in files.values())
    out = {}
    for name, schema in files.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema, registry=registry,
                                                    format_checker=jsonschema.FormatChecker())
    return out


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_valid_samples_pass(type_: str, validators: dict[str, Any]) -> None:
    sample = sample_dict(type_)
    for name in (f"{type_}.json", "event.json", "record.json"):
        errors = list(validators[name].iter_errors(sample))
        assert errors == [], (name, [e.message for e in errors])
    assert list(validators["record.json"].iter_errors([sample, sample])) == []


def test_record_schema_rejects_empty_batch(validators: dict[str, Any]) -> None:
    assert not validators["record.json"].is_valid([])
    assert not validators["record.json"].is_valid([sample_dict(), {"type": "order.placed"}])


def test_type_schema_rejects_other_types(validators: dict[str, Any]) -> None:
    assert not validators["order.placed.json"].is_valid(sample_dict("cart.added"))


@pytest.mark.parametrize(("type_", "mutate"), [(c[1], c[2]) for c in ERROR_CASES if c[0] not in NOT_EXPRESSIBLE],
                         ids=[c[0] for c in ERROR_CASES if c[0] not in NOT_EXPRESSIBLE])
def test_invalid_events_fail(type_: str, mutate: Mutator, validators: dict[str, Any]) -> None:
    obj = copy.deepcopy(sample_dict(type_))
    mutate(obj)
    assert not validators["event.json"].is_valid(obj)
    assert not validators["record.json"].is_valid(obj)
    if obj.get("type") == type_:
        assert not validators[f"{type_}.json"].is_valid(obj)


def test_committed_files_are_valid_json() -> None:
    for path in sorted(gen.DEFAULT_DIR.glob("*.json")):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path


def test_invalid_event_gets_the_errors_of_its_own_type(validators: dict[str, Any]) -> None:
    obj = sample_dict("order.placed")
    obj["data"]["qty"] = 0
    errors = [e for e in validators["event.json"].iter_errors(obj) if e.validator not in ("if", "then")]
    leaves = [e for err in errors for e in ([err] if not err.context else err.context)]
    assert [(list(e.absolute_path), e.validator) for e in leaves] == [(["data", "qty"], "minimum")]


# --- third-party validators, as shipped: no network, no base URI --------------------------------------------

SCHEMA_DIR = gen.DEFAULT_DIR
AJV = Path(__file__).resolve().parents[3] / ".venv" / "node" / "node_modules" / ".bin" / "ajv"


def _write(tmp_path: Path, name: str, obj: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def _bad_order(tmp_path: Path) -> Path:
    obj = sample_dict("order.placed")
    obj["data"]["qty"] = 0
    return _write(tmp_path, "bad.json", obj)


def _good_batch(tmp_path: Path) -> Path:
    return _write(tmp_path, "good.json", [sample_dict(t) for t in sorted(PAYLOADS)])


def test_check_jsonschema_accepts_record_json_as_shipped(tmp_path: Path) -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    ok = subprocess.run([str(tool), "--no-cache", "--schemafile", str(SCHEMA_DIR / "record.json"),
                         str(_good_batch(tmp_path))], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([str(tool), "--no-cache", "--schemafile", str(SCHEMA_DIR / "event.json"),
                          str(_bad_order(tmp_path))], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    pointed = [line for line in bad.stdout.splitlines() if "::$" in line]
    assert len(pointed) == 1 and "$.data.qty" in pointed[0], bad.stdout


def test_python_jsonschema_accepts_record_json_as_shipped() -> None:
    import jsonschema

    schema = json.loads((SCHEMA_DIR / "record.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)  # no registry: everything is bundled
    assert list(validator.iter_errors([sample_dict(t) for t in sorted(PAYLOADS)])) == []
    bad = sample_dict("order.placed")
    bad["data"]["qty"] = 0
    assert not validator.is_valid(bad) and not validator.is_valid([bad])


def test_ajv_accepts_record_json_as_shipped(tmp_path: Path) -> None:
    assert AJV.exists(), "ajv-cli is installed by `make venv` (npm); run make test"
    base = [str(AJV), "validate", "--spec=draft2020", "--errors=json"]
    ok = subprocess.run([*base, "-s", str(SCHEMA_DIR / "record.json"), "-d", str(_good_batch(tmp_path))],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*base, "-s", str(SCHEMA_DIR / "event.json"), "-d", str(_bad_order(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    report = bad.stdout + bad.stderr
    errors = json.loads(report[report.index("["):report.rindex("]") + 1])
    pointed = [e for e in errors if e["keyword"] not in ("if", "then")]
    assert [(e["instancePath"], e["keyword"]) for e in pointed] == [("/data/qty", "minimum")], report
