"""The generated QwenFineTune CRD: drift guard, structural schema, descriptions, rules.

Covers: the committed CRD equals `python -m qwenft_operator.crd` (regenerate on drift);
the schema is structural (no $ref/$defs, anyOf only for int-or-string, a type on every
node, preserve-unknown-fields only on the free-form pod fields); every property has a
description; every pydantic Rule appears as a CEL rule with its message; immutable
fields; the declared status (conditions keyed by type); printer columns pick conditions
by type and carry descriptions; bounds and defaults carried from the trainer config.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from qwenft_operator import crd, sources, spec, workloads
from qwenft_operator.rules import SpecObject
from qwenft_trainer.config import LoraSettings

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / crd.CRD_PATH
# Free-form Kubernetes objects passed through to pods, and only these.
PRESERVED = {
    "spec.scheduling.tolerations[]",
    "spec.scheduling.affinity",
    "spec.validation.tolerations[]",
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def test_committed_crd_matches_the_generator() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd.render_crd(), (
        f"{crd.CRD_PATH} is stale: run `python -m qwenft_operator.crd -o {crd.CRD_PATH}`"
    )


def test_check_flag_reports_a_stale_file(tmp_path: Path) -> None:
    assert crd.main(["--check", str(COMMITTED)]) == 0
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render_crd().replace("LoRA rank.", "Rank."), encoding="utf-8")
    assert crd.main(["--check", str(stale)]) == 1


def test_names_and_scope() -> None:
    body = yaml.safe_load(COMMITTED.read_text(encoding="utf-8"))
    assert body["metadata"]["name"] == "qwenfinetunes.finetune.qwenft.io"
    names = body["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "QwenFineTune", "qwenfinetunes", ["qft", "qwenft"]
    )  # fmt: skip
    version = body["spec"]["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "$defs" not in text and "title:" not in text
    for path, node in walk(schema):
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("nullable") is None, path


def test_preserve_unknown_fields_only_on_free_form_pod_fields(schema: dict[str, Any]) -> None:
    preserved = {p for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert preserved == PRESERVED


def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    missing = [path for path, node in walk(schema) if path and not node.get("description")]
    missing = [p for p in missing if not p.endswith(("[]", ".*"))]  # items describe via parent
    # The API server refuses anything on metadata but restrictions on name/generateName.
    assert missing == ["metadata"]
    assert set(schema["properties"]["metadata"]) == {"type", "properties"}


def _rule_classes() -> list[type[SpecObject]]:
    found = []
    for module in (spec, sources, workloads):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, SpecObject) and value.rules:
                found.append(value)
    return found


def test_every_pydantic_rule_is_a_cel_rule(schema: dict[str, Any]) -> None:
    emitted = {
        (rule["rule"], rule["message"])
        for _, node in walk(schema)
        for rule in node.get("x-kubernetes-validations", [])
    }
    classes = _rule_classes()
    assert len(classes) >= 5
    for cls in classes:
        for rule in cls.rules:
            assert (rule.cel, rule.message) in emitted, f"{cls.__name__}: {rule.cel}"
            assert len(rule.cel) <= 160, f"CEL rule too long to read: {rule.cel}"


def test_immutable_fields(schema: dict[str, Any]) -> None:
    props = schema["properties"]["spec"]["properties"]
    for name in spec.IMMUTABLE_FIELDS:
        rules = props[name]["x-kubernetes-validations"]
        assert {
            "rule": "self == oldSelf",
            "message": f"{name} is immutable; create a new run",
        } in rules


def test_run_name_rule_at_root(schema: dict[str, Any]) -> None:
    assert schema["x-kubernetes-validations"] == [crd.NAME_RULE]
    assert "metadata.name" in crd.NAME_RULE["message"]


def test_bounds_enums_and_defaults_come_from_the_trainer_config(schema: dict[str, Any]) -> None:
    props = schema["properties"]["spec"]["properties"]
    r = props["lora"]["properties"]["r"]
    assert (r["minimum"], r["maximum"], r["default"]) == (1, 1024, 64)
    dropout = props["lora"]["properties"]["dropout"]
    assert (dropout["minimum"], dropout["maximum"]) == (0, 1)
    assert props["method"]["enum"] == ["lora", "qlora", "full"]
    assert props["deepspeed"]["properties"]["zeroStage"]["enum"] == [0, 2, 3]
    assert props["training"]["properties"]["precision"]["enum"] == ["bf16", "fp16", "fp32"]
    lr = props["training"]["properties"]["learningRate"]
    assert (lr["minimum"], lr["exclusiveMinimum"]) == (0, True)
    assert props["resources"]["properties"]["nodes"]["minimum"] == 1
    assert props["resources"]["properties"]["sharedMemorySize"]["x-kubernetes-int-or-string"]
    default = LoraSettings().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert props["lora"]["default"] == default
    # Unset targets mean the architecture's defaults, so the CRD spells out none.
    assert "targetModules" not in props["lora"]["default"]
    assert "default" not in props["lora"]["properties"]["targetModules"]
    assert props["lora"]["properties"]["targetModules"]["minItems"] == 1
    assert "default" not in props["lora"]["properties"]["targetParameters"]
    assert props["inference"]["default"] == {
        "enabled": True, "engine": "builtin", "replicas": 1, "gpus": 1,
    }  # fmt: skip
    assert props["quantization"].get("default") is None


def test_status_is_declared(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert not status.get("x-kubernetes-preserve-unknown-fields")
    props = status["properties"]
    assert {
        "phase", "conditions", "observedGeneration", "progress", "checkpoints", "startTime",
        "completionTime", "resumedFromStep", "outputs", "endpoint", "children", "smokeTest",
    } <= set(props)  # fmt: skip
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "lastTransitionTime"}
    assert set(props["progress"]["properties"]) >= {
        "step", "totalSteps", "epoch", "loss", "evalLoss", "learningRate",
        "tokensPerSecond", "etaSeconds", "display",
    }  # fmt: skip
    assert "Failed" in props["phase"]["enum"] and "Ready" in props["phase"]["enum"]


def test_printer_columns() -> None:
    columns = crd.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in columns}
    assert list(by_name)[:5] == ["Phase", "Progress", "Loss", "Ready", "Endpoint"]
    assert by_name["Age"]["type"] == "date"
    assert by_name["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    for column in columns:
        assert column["description"]
        assert "conditions[0]" not in column["jsonPath"], "select conditions by type"
