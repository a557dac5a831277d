"""The QwenFineTune spec model: shipped examples, refused manifests, error text.

Covers: every example in examples/ validates and renders a trainer config; each case of
invalid_manifests.CASES is refused by pydantic with a message naming its field (the e2e
suite applies the same table to the API server; test_crd_rules applies UPDATE_CASES to
the CRD's transition rules); format_errors joins rule messages onto their object's path;
cluster-only problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from invalid_manifests import BASE_MANIFEST, CASES, InvalidCase, build
from pydantic import ValidationError
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.parsed_run import Run
from qwenft_operator.spec import (
    ManifestError,
    QwenFineTune,
    QwenFineTuneSpec,
    load_manifest,
)
from qwenft_trainer.rules import format_errors

EXAMPLES = sorted(
    path
    for path in (Path(__file__).parents[2] / "examples").glob("*.yaml")
    if "\nkind: QwenFineTune\n" in path.read_text(encoding="utf-8")
)


def test_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {
        "lora-single-gpu.yaml",
        "qlora-multinode-zero2.yaml",
        "full-finetune.yaml",
        "kueue-queued.yaml",
        "quickstart-local.yaml",
        "qwen3-8b-thinking.yaml",
        "qwen3-30b-a3b-moe.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_renders(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(("# kubectl apply -f examples/", "# qwenft run examples/"))
    assert path.name in text.splitlines()[0], "the first line must be the command that runs it"
    manifest = yaml.safe_load(text)
    QwenFineTune.model_validate(manifest)
    run = Run.from_body(manifest)
    config = build_train_config(run)
    assert config.run_name == manifest["metadata"]["name"]
    local = path.name.startswith("quickstart-local")
    assert bool(run.spec.cluster_problems()) == local


def test_base_manifest_is_valid() -> None:
    QwenFineTune.model_validate(BASE_MANIFEST)


def _error_text(manifest: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        QwenFineTune.model_validate(manifest)
    return "\n".join(format_errors(info.value))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(case: InvalidCase) -> None:
    text = _error_text(build(case))
    assert case.field in text, f"{case.id}: error does not name {case.field}:\n{text}"


def test_invalid_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def test_rule_messages_are_joined_onto_their_path() -> None:
    manifest = build(CASES[[c.id for c in CASES].index("qlora-zero3")])
    lines = _error_text(manifest).splitlines()
    assert lines == [
        "spec.deepspeed.zeroStage: ZeRO-3 can't shard 4-bit Q-LoRA weights: use zeroStage 2, "
        "or method lora"
    ]


def test_several_broken_rules_are_all_reported() -> None:
    spec = {
        **BASE_MANIFEST["spec"],
        "method": "qlora",
        "training": {"precision": "fp32"},
        "deepspeed": {"enabled": True, "zeroStage": 3},
    }
    with pytest.raises(ValidationError) as info:
        QwenFineTuneSpec.model_validate(spec)
    text = "\n".join(format_errors(info.value, prefix="spec"))
    assert "spec.deepspeed.zeroStage:" in text
    assert "spec.training.precision:" in text


def test_qlora_without_quantization_trains_the_trainers_nf4_default() -> None:
    """The spec and the trainer agree: method qlora alone means NF4, double quant, bf16."""
    body = {**BASE_MANIFEST, "spec": {**BASE_MANIFEST["spec"], "method": "qlora"}}
    run = Run.from_body({**body, "metadata": {"name": "r", "namespace": "n", "uid": "u"}})
    assert run.spec.quantization is None
    quantization = build_train_config(run).quantization
    assert quantization is not None
    assert (quantization.quant_type, quantization.double_quant) == ("nf4", True)
    assert quantization.compute_dtype == "bf16"


def test_defaults_match_the_trainer_config() -> None:
    spec = QwenFineTuneSpec.model_validate(BASE_MANIFEST["spec"])
    assert spec.method == "lora"
    assert spec.lora.r == 64
    assert spec.training.precision == "bf16"
    assert spec.resources.nodes == 1
    assert spec.inference.engine == "builtin"
    assert spec.merge.enabled


def test_snake_case_keys_are_accepted_in_python() -> None:
    spec = QwenFineTuneSpec.model_validate(
        {**BASE_MANIFEST["spec"], "run_policy": {"backoff_limit": 0}}
    )
    assert spec.run_policy.backoff_limit == 0
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["runPolicy"]["backoffLimit"] == 0


def test_load_manifest_reports_every_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    bad = build(CASES[[c.id for c in CASES].index("lora-rank-zero")])
    bad["spec"]["training"] = {"epochs": 0}
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).splitlines() == [
        f"invalid QwenFineTune {path}:",
        "  spec.lora.r: Input should be greater than or equal to 1",
        "  spec.training.epochs: Input should be greater than 0",
    ]
    path.write_text(yaml.safe_dump(BASE_MANIFEST), encoding="utf-8")
    assert load_manifest(path).metadata.name == "invalid-case"
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="one QwenFineTune object"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="can't read"):
        load_manifest(tmp_path / "missing.yaml")
