"""The CRD's validation, evaluated the way the API server does, without a cluster.

The committed CRD's schema is applied to each manifest of invalid_manifests.py: defaults
filled in (structural defaulting), then the OpenAPI bounds, enums, patterns and required
fields (jsonschema, draft 4 semantics as in OpenAPI v3.0), then every CEL
``x-kubernetes-validations`` rule (cel-python). Each case must be refused with an error
naming its field, by the CRD itself and not only by pydantic; every shipped example must
pass; each immutable field's transition rule refuses a change. This checks that the CEL
expressions say what their pydantic mirrors say. The e2e suite repeats it against a real
API server.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from invalid_manifests import (
    BASE_MANIFEST,
    CASES,
    UPDATE_CASES,
    InvalidCase,
    UpdateCase,
    apply_changes,
    build,
)
from qwenft_operator import crd
from qwenft_operator.spec import QwenFineTune

celpy = pytest.importorskip("celpy", reason="cel-python evaluates the CRD's CEL rules")

EXAMPLES = Path(__file__).parents[2] / "examples"
SCHEMA: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[2] / crd.CRD_PATH).read_text(encoding="utf-8")
)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: fill missing properties that have defaults, recursively;
    numbers become floats, as CEL sees ``type: number`` fields."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(out[name], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(SCHEMA)
    found = []
    for error in validator.iter_errors(obj):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1]
            path = f"{path}.{missing}" if path else missing
        found.append(f"{path}: {error.message}")
    return found


def rules_at(
    value: Any, old: Any, schema: dict[str, Any], path: str
) -> Iterator[tuple[str, dict[str, Any], Any, Any]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value, old
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                child_old = old.get(name) if isinstance(old, dict) else None
                yield from rules_at(value[name], child_old, sub, f"{path}.{name}".lstrip("."))


def cel_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    env = celpy.Environment()
    found = []
    for path, rule, value, old_value in rules_at(obj, old, SCHEMA, ""):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old_value is None:
            continue  # transition rules run on updates only
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old_value)
        result = env.program(env.compile(rule["rule"])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{rule['rule']}: {result!r}"
        if not result:
            where = f"{path}{rule.get('fieldPath', '')}".lstrip(".")
            found.append(f"{where}: {rule['message']}")
    return found


def api_server_errors(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    obj = apply_defaults(manifest, SCHEMA)
    errors = schema_errors(obj)
    if errors:  # the API server reports schema errors before it runs CEL rules
        return errors
    return cel_errors(obj, apply_defaults(old, SCHEMA) if old else None)


def declared(path: str) -> bool:
    node = SCHEMA
    for part in path.split("."):
        if part not in node.get("properties", {}):
            return False
        node = node["properties"][part]
    return True


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_crd_refuses_invalid_manifest(case: InvalidCase) -> None:
    if case.strict:
        assert not declared(case.field), f"{case.field} is declared; strict validation keeps it"
        return
    errors = api_server_errors(build(case))
    assert errors, f"{case.id}: the CRD accepts it"
    named = [e for e in errors if e.startswith(case.field) or case.field in e.split(": ", 1)[1]]
    assert named, f"{case.id}: no error names {case.field}: {errors}"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(EXAMPLES.glob("*.yaml")) if "\nkind: QwenFineTune\n" in p.read_text()],
    ids=lambda p: p.name,
)
def test_crd_accepts_shipped_examples(path: Path) -> None:
    assert api_server_errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.inference": {"checkpoint": 900}},
        {"spec.inference": {"checkpoint": "best"}, "spec.evaluation": {"fraction": 0.1}},
        {"spec.method": "full", "spec.inference": {"checkpoint": 200}},
    ],
    ids=["step", "best-with-evaluation", "full-builtin-step"],
)
def test_crd_and_model_accept_checkpoint_choices(changes: dict[str, Any]) -> None:
    manifest = apply_changes(BASE_MANIFEST, changes)
    assert api_server_errors(manifest) == []
    spec = QwenFineTune.model_validate(manifest).spec
    assert spec.inference.checkpoint == changes["spec.inference"]["checkpoint"]


@pytest.mark.parametrize("case", UPDATE_CASES, ids=lambda c: c.id)
def test_crd_refuses_changing_immutable_fields(case: UpdateCase) -> None:
    old = build(UpdateCase("base", ""))
    new = build(case)
    assert api_server_errors(new) == [], "the changed manifest is valid on its own"
    errors = api_server_errors(new, old)
    assert errors == [f"{case.field}: {case.field.split('.')[-1]} is immutable; create a new run"]


def test_unchanged_update_passes_transition_rules() -> None:
    base = build(UpdateCase("base", ""))
    changed = copy.deepcopy(base)
    changed["spec"]["suspend"] = True
    assert api_server_errors(changed, base) == []


def test_defaults_pass_their_own_rules_as_written() -> None:
    """The API server checks a default against the rules of its node without filling in
    nested defaults first (a bare ``default: {}`` fails a rule that reads a field)."""
    checked = 0
    for path, node in walk_schema(SCHEMA, ""):
        if "default" in node and "x-kubernetes-validations" in node:
            assert cel_errors_at(node["default"], node) == [], path
            checked += 1
    assert checked >= 1


def walk_schema(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk_schema(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk_schema(node["items"], f"{path}[]")


def cel_errors_at(value: Any, node: dict[str, Any]) -> list[str]:
    env = celpy.Environment()
    failed = []
    for rule in node["x-kubernetes-validations"]:
        if "oldSelf" in rule["rule"]:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        try:
            ok = env.program(env.compile(rule["rule"])).evaluate(activation)
        except celpy.CELEvalError as err:
            failed.append(f"{rule['rule']}: {err}")
            continue
        if not ok:
            failed.append(rule["message"])
    return failed
