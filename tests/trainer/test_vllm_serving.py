"""The vLLM serving decision (qwenft_trainer.vllm_serving) on real PEFT adapters.

Covers: adapters from real trainer runs (LoRA and Q-LoRA of ranks 8 and 40, and one with
modules_to_save); rank rounding to vLLM's allowed --max-lora-rank values for adapters of several
ranks; the rendered vllm arguments; adapters that must be merged first (modules_to_save,
DoRA, rank above 512, LoRA on the output head); per-module rank_pattern; unreadable
adapter configs; the module imports without torch; the decision for each architecture's
default adapter (dense: served as LoRA; MoE with fused-expert tensors: merged first, and a
MoE adapter without experts served as LoRA).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qwenft_trainer.vllm_serving import (
    VLLM_MAX_LORA_RANKS,
    AdapterConfigError,
    read_vllm_decision,
    round_up_lora_rank,
)


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(1, 8), (2, 8), (8, 8), (12, 16), (64, 64), (65, 128), (257, 320), (321, 512), (512, 512)],
)
def test_round_up_lora_rank(rank: int, expected: int) -> None:
    assert round_up_lora_rank(rank) == expected
    assert expected in VLLM_MAX_LORA_RANKS


def test_round_up_lora_rank_above_vllm_limit_is_none() -> None:
    assert round_up_lora_rank(513) is None
    with pytest.raises(ValueError):
        round_up_lora_rank(0)


@pytest.mark.parametrize(("rank", "max_rank"), [(8, 8), (12, 16), (100, 128), (300, 320)])
def test_plain_lora_adapters_are_served_with_enable_lora(
    make_adapter, rank: int, max_rank: int
) -> None:
    adapter = make_adapter(f"serving-r{rank}", r=rank)
    decision = read_vllm_decision(
        adapter, served_model_name="demo", adapter_path="/adapters/demo", base_model="/models/base"
    )
    assert decision.mode == "lora"
    assert not decision.requires_merge
    assert decision.adapter_rank == rank
    assert decision.max_lora_rank == max_rank
    assert decision.reasons == ()
    assert decision.vllm_args() == [
        "--model",
        "/models/base",
        "--enable-lora",
        "--max-lora-rank",
        str(max_rank),
        "--max-loras",
        "1",
        "--lora-modules",
        "demo=/adapters/demo",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "rank", "max_rank"), [("lora", 8, 8), ("qlora", 40, 64)])
def test_trained_adapters_are_served_as_lora(
    trained_adapter, tiny_model_dir: Path, method: str, rank: int, max_rank: int
) -> None:
    decision = read_vllm_decision(trained_adapter(method, r=rank), served_model_name="run")
    assert decision.mode == "lora", decision.reasons
    assert decision.adapter_rank == rank
    assert decision.max_lora_rank == max_rank
    assert decision.base_model == str(tiny_model_dir)


@pytest.mark.slow
def test_trained_adapter_with_modules_to_save_must_be_merged(trained_adapter) -> None:
    decision = read_vllm_decision(
        trained_adapter("lora", modules_to_save=["lm_head"]), served_model_name="run"
    )
    assert decision.requires_merge
    assert decision.reasons == (
        "modules_to_save ['lm_head'] are trained in full; vLLM loads only the low-rank "
        "matrices of an adapter",
    )


def test_base_model_defaults_to_the_adapters_own(make_adapter, tiny_model_dir: Path) -> None:
    decision = read_vllm_decision(make_adapter("serving-r8", r=8), served_model_name="demo")
    assert decision.base_model == str(tiny_model_dir)
    assert decision.vllm_args()[:2] == ["--model", str(tiny_model_dir)]


def test_modules_to_save_requires_merge(make_adapter) -> None:
    adapter = make_adapter("serving-mts", r=8, modules_to_save=["lm_head"])
    decision = read_vllm_decision(adapter, served_model_name="demo")
    assert decision.requires_merge
    assert decision.max_lora_rank is None
    assert any("modules_to_save" in reason for reason in decision.reasons)
    assert decision.vllm_args(model="/merged") == [
        "--model",
        "/merged",
        "--served-model-name",
        "demo",
    ]
    with pytest.raises(ValueError, match="merged model directory"):
        decision.vllm_args()


def test_rank_above_vllm_limit_requires_merge(make_adapter) -> None:
    decision = read_vllm_decision(make_adapter("serving-r600", r=600), served_model_name="x")
    assert decision.requires_merge
    assert decision.adapter_rank == 600
    assert any("above vLLM's largest --max-lora-rank 512" in r for r in decision.reasons)


def test_lora_on_output_head_requires_merge(make_adapter) -> None:
    adapter = make_adapter("serving-head", r=8, target_modules=["q_proj", "lm_head"])
    decision = read_vllm_decision(adapter, served_model_name="x")
    assert decision.requires_merge
    assert any("lm_head" in reason for reason in decision.reasons)


def _edited_copy(adapter: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_dora_requires_merge(make_adapter, tmp_path: Path) -> None:
    adapter = _edited_copy(make_adapter("serving-r8", r=8), tmp_path, use_dora=True)
    decision = read_vllm_decision(adapter, served_model_name="x")
    assert decision.requires_merge
    assert any("DoRA" in reason for reason in decision.reasons)


def test_rank_pattern_sets_the_rank(make_adapter, tmp_path: Path) -> None:
    adapter = _edited_copy(make_adapter("serving-r8", r=8), tmp_path, rank_pattern={"q_proj": 48})
    decision = read_vllm_decision(adapter, served_model_name="x")
    assert decision.adapter_rank == 48
    assert decision.max_lora_rank == 64


def test_unreadable_adapter_config(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigError, match="not a PEFT adapter directory"):
        read_vllm_decision(tmp_path, served_model_name="x")
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterConfigError, match="not valid JSON"):
        read_vllm_decision(tmp_path, served_model_name="x")


def test_serving_module_does_not_import_torch() -> None:
    code = (
        "import sys, qwenft_trainer.vllm_serving\n"
        "assert 'torch' not in sys.modules, 'serving imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _default_adapter(model_dir: Path, out: Path, **lora: object) -> Path:
    """The adapter the trainer's default targets give on ``model_dir`` (untrained)."""
    from peft import get_peft_model
    from qwenft_trainer.config import TrainConfig
    from qwenft_trainer.modeling import build_lora_config
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"path": "/unused.jsonl"},
            "output_dir": "/unused",
            "lora": {"r": 8, "alpha": 16, **lora},
        }
    )
    get_peft_model(model, build_lora_config(config, model)).save_pretrained(str(out))
    return out


# Dense architectures: attention, MLP and linear-attention LoRA, which vLLM serves unmerged.
# MoE ones: fused-expert tensors, which no vLLM Qwen MoE model serves as a PEFT LoRA yet.
VLLM_MODES = {
    "qwen2": "lora",
    "qwen3": "lora",
    "qwen3_5": "lora",
    "qwen3_moe": "merged",
    "qwen3_next": "merged",
    "qwen3_5_moe": "merged",
}


@pytest.mark.parametrize("arch", sorted(VLLM_MODES))
def test_vllm_decision_per_architecture(tiny_arch_dir, tmp_path: Path, arch: str) -> None:
    model_dir = tiny_arch_dir(arch)
    adapter = _default_adapter(model_dir, tmp_path / "adapter")
    decision = read_vllm_decision(adapter, served_model_name="demo", base_model=str(model_dir))
    assert decision.mode == VLLM_MODES[arch], decision.reasons
    if decision.requires_merge:
        assert len(decision.reasons) == 1
        assert "target_parameters" in decision.reasons[0]
        assert arch in decision.reasons[0]  # the base's model_type, read from its config
    else:
        assert decision.max_lora_rank == 8


def test_moe_adapter_without_experts_is_served_unmerged(tiny_arch_dir, tmp_path: Path) -> None:
    model_dir = tiny_arch_dir("qwen3_moe")
    adapter = _default_adapter(model_dir, tmp_path / "adapter", target_parameters=[])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert not config.get("target_parameters")
    decision = read_vllm_decision(adapter, served_model_name="demo", base_model=str(model_dir))
    assert decision.mode == "lora", decision.reasons


def test_lora_args_serve_every_module_at_a_rank_vllm_accepts() -> None:
    from qwenft_trainer.vllm_serving import lora_args

    modules = {"code": "/adapters/runs/code", "text": "/adapters/runs/text"}
    assert lora_args(modules, max_lora_rank=64) == [
        "--enable-lora",
        "--max-lora-rank", "64",
        "--max-loras", "2",
        "--lora-modules", "code=/adapters/runs/code", "text=/adapters/runs/text",
    ]  # fmt: skip
    limited = lora_args(modules, max_lora_rank=64, max_loras=1, max_cpu_loras=4)
    assert limited[3:7] == ["--max-loras", "1", "--max-cpu-loras", "4"]
    with pytest.raises(ValueError, match="--max-lora-rank 48 is not one of"):
        lora_args(modules, max_lora_rank=48)
