"""TrainConfig, and from it to the Trainer's settings, without training.

Covers: TrainConfig defaults (targets left to the architecture, Q-LoRA's 4-bit block), YAML
/ JSON / camelCase (CRD) keys loading the same config, impossible combinations and
unreadable files refused naming the field, the tuning advice; the TrainingArguments mapping
(precision, checkpointing, warmup share, no Trainer-side rotation, gloo only for multi-
process CPU runs) and that transformers accepts it; command-line overrides validated like
the file; every shipped TrainConfig example (``examples/train-*.yaml``) loads and opens with
the command that runs it; rank and world size read from torchrun's environment; the
collective timeout (default, override, a bad value named) and which errors mean a collective
failed (PeerLost); the termination message stays under 4 KiB and is written only where the
file exists; the method-specific model loading arguments (4-bit for Q-LoRA, token passed but
never shown); ``qwenft train`` reaching this entry point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenft_trainer.arguments import build_training_arguments, build_training_kwargs
from qwenft_trainer.config import ConfigError, TrainConfig, load_config
from qwenft_trainer.distributed import (
    COLLECTIVE_TIMEOUT_ENV,
    DistributedEnv,
    collective_timeout,
    is_communication_error,
)
from qwenft_trainer.summary import build_termination_message, write_termination_log
from qwenft_trainer.train import apply_overrides, build_parser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("train-*.yaml"))
BASE = {"model": {"name_or_path": "/m"}, "data": {"path": "/d.jsonl"}, "output_dir": "/out"}


def config(**extra: object) -> TrainConfig:
    data = {
        "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"path": "d.jsonl"},
        "output_dir": "/tmp/o",
        **extra,
    }
    return TrainConfig.model_validate(data)


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


def test_training_kwargs_follow_the_config() -> None:
    c = config(
        training={"precision": "fp16", "warmup_ratio": 0.1, "max_steps": 50, "epochs": 2},
        checkpoint={"save_steps": 7},
        evaluation={"fraction": 0.1, "steps": 5},
        run_name="r1",
    )
    kwargs = build_training_kwargs(c, use_cpu=False, deepspeed=None, has_eval=True)
    expected = {
        "output_dir": "/tmp/o",
        "run_name": "r1",
        "fp16": True,
        "bf16": False,
        "warmup_steps": 0.1,
        "max_steps": 50,
        "num_train_epochs": 2.0,
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "save_strategy": "steps",
        "save_steps": 7,
        "save_total_limit": None,
        "save_only_model": False,
        "eval_strategy": "steps",
        "eval_steps": 5,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "remove_unused_columns": False,
        "ddp_backend": None,
    }
    assert {k: kwargs[k] for k in expected} == expected


def test_cpu_backend_is_gloo_only_with_several_processes() -> None:
    c = config(training={"precision": "fp32"})
    assert (
        build_training_kwargs(c, use_cpu=True, deepspeed=None, has_eval=False)["ddp_backend"]
        is None
    )
    assert (
        build_training_kwargs(c, use_cpu=True, deepspeed=None, has_eval=False, world_size=2)[
            "ddp_backend"
        ]
        == "gloo"
    )


def test_transformers_accepts_the_arguments() -> None:
    c = config(training={"precision": "fp32", "warmup_ratio": 1.0, "gradient_checkpointing": False})
    args = build_training_arguments(c, use_cpu=True, deepspeed=None, has_eval=False)
    assert args.per_device_train_batch_size == 1
    assert args.gradient_accumulation_steps == 8
    assert 0 < args.warmup_steps < 1
    assert args.eval_strategy == "no"


def test_overrides_are_validated() -> None:
    parser = build_parser()
    c = config()
    args = parser.parse_args(["--config", "x", "--max-steps", "3", "--output-dir", "/tmp/p"])
    changed = apply_overrides(c, args)
    assert (changed.training.max_steps, changed.output_dir) == (3, "/tmp/p")
    with pytest.raises(ConfigError, match=r"training\.max_steps"):
        apply_overrides(c, parser.parse_args(["--config", "x", "--max-steps", "-5"]))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_train_configs_load_and_name_their_command(path: Path) -> None:
    loaded = load_config(path)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and "train --config examples/" + path.name in first
    assert loaded.advice() == [] or all(isinstance(a, str) for a in loaded.advice())


def test_examples_exist() -> None:
    assert any(p.name == "train-lora.yaml" for p in EXAMPLES)


def test_collective_timeout_default_override_and_bad_value() -> None:
    assert collective_timeout({}).total_seconds() == 600
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "90"}).total_seconds() == 90
    with pytest.raises(ValueError, match=f"{COLLECTIVE_TIMEOUT_ENV}='ten'.*whole number"):
        collective_timeout({COLLECTIVE_TIMEOUT_ENV: "ten"})
    with pytest.raises(ValueError, match=COLLECTIVE_TIMEOUT_ENV):
        collective_timeout({COLLECTIVE_TIMEOUT_ENV: "0"})


def test_communication_errors_are_told_from_other_errors() -> None:
    import torch.distributed as dist

    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[127.0.0.1]:9614: Connection reset by peer."
    )
    assert is_communication_error(gloo)
    assert is_communication_error(dist.DistBackendError("NCCL error: remote process exited"))
    assert is_communication_error(dist.DistStoreError("timed out waiting for key"))
    assert not is_communication_error(RuntimeError("CUDA out of memory"))
    assert not is_communication_error(ValueError("bad gloo/transport value"))


def test_distributed_env_from_torchrun_variables() -> None:
    env = DistributedEnv.from_environ(
        {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    )
    assert (env.rank, env.local_rank, env.world_size, env.nodes) == (9, 1, 16, 2)
    assert env.distributed and not env.is_main
    single = DistributedEnv.from_environ({})
    assert (single.rank, single.world_size, single.distributed) == (0, 1, False)


def test_termination_message_fits_4kib(tmp_path: Path) -> None:
    text = build_termination_message({"status": "failed", "message": "x" * 10_000})
    assert len(text.encode()) <= 4096
    assert json.loads(text)["status"] == "failed"
    missing = tmp_path / "termination-log"
    assert not write_termination_log(missing, {"status": "succeeded"})
    assert not missing.exists()
    missing.touch()
    assert write_termination_log(missing, {"status": "succeeded", "steps": 3})
    assert json.loads(missing.read_text()) == {"status": "succeeded", "steps": 3}


def test_qlora_loads_4bit_on_the_rank_device_and_token_stays_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qwenft_trainer.base_checks import source_kwargs
    from qwenft_trainer.modeling import build_load_kwargs

    monkeypatch.setenv("QWENFT_TEST_TOKEN", "hf_secret")
    c = config(
        method="qlora",
        model={"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "token_env": "QWENFT_TEST_TOKEN"},
        quantization={"quant_type": "nf4", "compute_dtype": "bf16"},
    )
    kwargs = build_load_kwargs(c, device="cuda:1")
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert kwargs["device_map"] == {"": "cuda:1"}
    assert source_kwargs(c.model)["token"] == "hf_secret"
    assert "hf_secret" not in repr(c) and "hf_secret" not in str(c.model.token())
    with pytest.raises(ValueError, match="device"):
        build_load_kwargs(c, device=None)


def test_qwenft_train_dispatches_to_this_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    from qwenft_operator.cli import main as qwenft

    with pytest.raises(SystemExit) as exit_info:
        qwenft(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out
