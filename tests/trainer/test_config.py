"""TrainConfig: defaults, YAML/JSON loading, and rejected combinations named by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenft_trainer.config import ConfigError, TrainConfig, load_config

BASE = {"model": {"name_or_path": "/m"}, "data": {"path": "/d.jsonl"}, "output_dir": "/out"}


def test_defaults_leave_targets_to_the_architecture() -> None:
    config = TrainConfig.model_validate(BASE)
    assert config.method == "lora"
    # None: resolved against the loaded model (qwenft_trainer.targets, test_targets.py)
    assert config.lora.target_modules is None
    assert config.lora.target_parameters is None
    assert config.lora.dropout is None
    assert config.lora.train_router is False
    assert config.quantization is None


def test_explicit_targets_are_kept_as_written() -> None:
    lora = {"target_modules": ["q_proj"], "target_parameters": [], "dropout": 0.1}
    config = TrainConfig.model_validate({**BASE, "lora": lora})
    assert config.lora.target_modules == ["q_proj"]
    assert config.lora.target_parameters == []
    assert config.lora.dropout == 0.1


def test_qlora_gets_a_4bit_quantization_block_by_default() -> None:
    config = TrainConfig.model_validate({**BASE, "method": "qlora"})
    assert config.quantization is not None
    assert config.quantization.quant_type == "nf4"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"method": "full", "quantization": {"quant_type": "nf4"}}, "quantization"),
        ({"method": "qlora", "training": {"precision": "fp32"}}, "training.precision"),
        ({"method": "qlora", "deepspeed": {"enabled": True, "zero_stage": 3}}, "zeroStage"),
        ({"deepspeed": {"offload_parameters": True}}, "deepspeed.offloadParameters"),
        ({"deepspeed": {"offload_optimizer": True}}, "deepspeed.offloadOptimizer"),
        ({"evaluation": {"fraction": 0.1, "file": "/e.jsonl"}}, "evaluation.fraction"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"dropout": 1.5}}, "lora.dropout"),
        ({"training": {"precision": "fp8"}}, "training.precision"),
        ({"trainig": {}}, "trainig"),
    ],
)
def test_impossible_combinations_are_rejected_naming_the_field(
    tmp_path: Path, override: dict[str, object], named: str
) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**BASE, **override}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert named in str(caught.value)


def test_yaml_and_json_load_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({**BASE, "lora": {"r": 16}}))
    (tmp_path / "b.yaml").write_text(
        "model: {name_or_path: /m}\ndata: {path: /d.jsonl}\noutput_dir: /out\nlora: {r: 16}\n"
    )
    assert load_config(tmp_path / "a.json") == load_config(tmp_path / "b.yaml")


def test_unreadable_and_non_mapping_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="can't read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_advice_follows_the_tuning_table() -> None:
    config = TrainConfig.model_validate(
        {**BASE, "method": "qlora", "lora": {"r": 4}, "training": {"learning_rate": 1e-3}}
    )
    advice = " ".join(config.advice())
    assert "lora.r=4" in advice
    assert "high for Q-LoRA" in advice
    assert config.effective_batch_size(world_size=4) == 1 * 8 * 4


def test_camel_case_keys_from_the_crd_load_the_same_config() -> None:
    snake = TrainConfig.model_validate(
        {**BASE, "training": {"max_seq_length": 512, "gradient_accumulation_steps": 2}}
    )
    camel = TrainConfig.model_validate(
        {
            "model": {"nameOrPath": "/m"},
            "data": {"path": "/d.jsonl"},
            "outputDir": "/out",
            "training": {"maxSeqLength": 512, "gradientAccumulationSteps": 2},
        }
    )
    assert snake == camel
