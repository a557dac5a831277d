"""The GPU-fit estimate (qwenft_trainer.fit_estimate, qwenft_trainer.model_shapes).

Covers: parameter counts from config.json equal transformers' own models for every tiny
architecture (dense, MoE, Qwen3-Next, Qwen3.5 with its vision tower), and the bundled hub
shapes land on their published sizes; the trainable count equals the adapter the trainer
builds (modeling.prepare_model) on every architecture; the estimate against Qwen's published Qwen-7B
fine-tuning memory (LoRA at 256 and 8192 tokens, Q-LoRA at 256; A100-80G, batch 1,
flash-attention, gradient checkpointing) within 15 %; monotonic properties (more tokens,
checkpointing, the fused loss, ZeRO-3 over more GPUs, NF4 vs bf16, double quant); the
verdict (fits / tight / too large, with the fixes that would fit).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from qwenft_trainer import fit_estimate
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.fit_estimate import GIB, estimate_memory, fixes_that_fit, judge
from qwenft_trainer.model_shapes import (
    KNOWN_CONFIGS,
    ModelShape,
    ShapeError,
    known_config,
    shape_fields,
)

# Qwen-7B's config.json (Qwen/Qwen-7B, the Qwen1 architecture): intermediate_size counts
# both SwiGLU branches (11008 each).
QWEN_7B: dict[str, Any] = {
    "model_type": "qwen",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "intermediate_size": 22016,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
}
# Qwen-7B-Chat-Int4, the base of Qwen's Q-LoRA measurements.
QWEN_7B_INT4 = {
    **QWEN_7B,
    "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128},
}
# Qwen's README, "Profiling of Memory and Speed" (GiB as torch reports them).
PUBLISHED_TOLERANCE = 0.15


def train_config(method: str = "lora", seq: int = 2048, **training: Any) -> TrainConfig:
    raw: dict[str, Any] = {
        "model": {"nameOrPath": "m"},
        "data": {"path": "d.jsonl"},
        "outputDir": "out",
        "method": method,
        "training": {"maxSeqLength": seq, **training},
    }
    return TrainConfig.model_validate(raw)


def qwen_script(method: str, seq: int) -> TrainConfig:
    """Qwen's finetune.py settings for the published numbers: r 64, dropout 0.05, batch 1,
    gradient checkpointing, the model's own loss; Q-LoRA in fp16."""
    raw: dict[str, Any] = {
        "model": {"nameOrPath": "Qwen/Qwen-7B-Chat"},
        "data": {"path": "d.jsonl"},
        "outputDir": "out",
        "method": method,
        "lora": {"r": 64, "alpha": 16, "dropout": 0.05},
        "training": {
            "maxSeqLength": seq,
            "perDeviceBatchSize": 1,
            "gradientCheckpointing": True,
            "kernels": "none",
            "precision": "fp16" if method == "qlora" else "bf16",
        },
    }
    if method == "qlora":
        raw["quantization"] = {"computeDtype": "fp16"}
    return TrainConfig.model_validate(raw)


def test_qwen_7b_shape_has_its_published_size() -> None:
    assert ModelShape.from_config(QWEN_7B).parameters() == pytest.approx(7.72e9, rel=0.005)


@pytest.mark.parametrize(
    ("config", "method", "seq", "published_gib"),
    [
        (QWEN_7B, "lora", 256, 20.1),
        (QWEN_7B, "lora", 8192, 36.6),
        (QWEN_7B_INT4, "qlora", 256, 11.5),
    ],
    ids=["lora-256", "lora-8192", "qlora-256"],
)
def test_estimate_matches_qwen_published_measurements(
    config: dict[str, Any], method: str, seq: int, published_gib: float
) -> None:
    estimate = estimate_memory(config, qwen_script(method, seq), gpus=1)
    assert estimate.total / GIB == pytest.approx(published_gib, rel=PUBLISHED_TOLERANCE)


def _tiny_configs() -> dict[str, Any]:
    from qwenft_trainer import tiny

    ids = {"vocab": 600, tiny.ENDOFTEXT: 0, tiny.IM_END: 1}
    ids.update({token: 2 + i for i, token in enumerate(tiny.VISION_TOKENS)})
    return {
        arch: (tiny.TinyModelSpec(arch=arch), tiny.build_config(tiny.TinyModelSpec(arch=arch), ids))
        for arch in tiny.TINY_ARCHS
    }


@pytest.mark.parametrize(
    "arch", ["qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe"]
)
def test_parameter_count_equals_transformers_model(arch: str) -> None:
    torch = pytest.importorskip("torch")
    from qwenft_trainer import tiny

    spec, config = _tiny_configs()[arch]
    with torch.device("meta"):
        model = tiny.build_model(spec, config)
    real = sum(p.numel() for p in model.parameters())
    assert ModelShape.from_config(config.to_dict()).parameters() == real
    # the validator reports only the shape fields; they size the model the same
    reported = shape_fields(config.to_dict())
    assert ModelShape.from_config(reported).parameters() == real
    assert len(json.dumps(reported)) < 2048


@pytest.mark.parametrize(
    "arch", ["qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe"]
)
def test_every_tiny_architecture_gets_a_sane_breakdown(arch: str) -> None:
    _, config = _tiny_configs()[arch]
    estimate = estimate_memory(config.to_dict(), train_config(seq=512), gpus=1)
    parts = estimate.parts
    assert set(parts) == set(fit_estimate.PARTS)
    assert all(value >= 0 for value in parts.values())
    for part in ("weights", "adapter", "gradients", "optimizer", "activations", "logits"):
        assert parts[part] > 0, part
    assert estimate.trainable > 0 and parts["optimizer"] == estimate.trainable * 8
    assert arch.removesuffix("_text") in estimate.model


def test_moe_holds_every_expert_and_adapts_expert_tensors() -> None:
    moe = ModelShape.from_config(known_config("Qwen/Qwen3-30B-A3B") or {})
    estimate = estimate_memory(moe, train_config(), gpus=1)
    # all 128 experts' bf16 weights, not the 3B active ones
    assert estimate.parts["weights"] == pytest.approx(moe.parameters() * 2, rel=0.001)
    assert moe.parameters() == pytest.approx(30.5e9, rel=0.01)
    no_experts = TrainConfig.model_validate(
        {**train_config().model_dump(), "lora": {"target_parameters": []}}
    )
    assert estimate_memory(moe, no_experts, gpus=1).trainable < estimate.trainable


def test_hybrid_layers_follow_the_config_layer_types() -> None:
    _, config = _tiny_configs()["qwen3_5"]
    shape = ModelShape.from_config(config.to_dict())
    assert shape.count("linear_attention") == 1 and shape.count("full_attention") == 1
    interval = {
        **QWEN_7B,
        "model_type": "qwen3_next",
        "full_attention_interval": 4,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "intermediate_size": 5120,
    }
    next_shape = ModelShape.from_config(interval)
    assert next_shape.count("full_attention") == 8 and next_shape.count("linear_attention") == 24


@pytest.mark.parametrize("name", sorted(KNOWN_CONFIGS))
def test_known_shapes_are_near_their_published_sizes(name: str) -> None:
    label = name.split("-")[-1] if "A3B" not in name and "A22B" not in name else name.split("-")[-2]
    published = float(label.rstrip("B"))
    assert ModelShape.from_config(KNOWN_CONFIGS[name]).parameters() / 1e9 == pytest.approx(
        published, rel=0.12
    )


def test_known_config_accepts_release_suffixes() -> None:
    assert known_config("Qwen/Qwen2.5-7B-Instruct") == KNOWN_CONFIGS["Qwen/Qwen2.5-7B"]
    assert known_config("Qwen/Qwen3-30B-A3B-Instruct-2507") == KNOWN_CONFIGS["Qwen/Qwen3-30B-A3B"]
    int4 = known_config("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4") or {}
    assert int4["hidden_size"] == 3584 and int4["quantization_config"]["bits"] == 4
    awq = ModelShape.from_config(known_config("Qwen/Qwen2.5-7B-Instruct-AWQ") or {})
    assert awq.quantization is not None and awq.quantization.method == "awq"
    assert known_config("/models/qwen") is None


def test_missing_shape_field_is_named() -> None:
    with pytest.raises(ShapeError, match="hidden_size"):
        ModelShape.from_config({"model_type": "qwen2", "num_hidden_layers": 2})


SEVEN_B = known_config("Qwen/Qwen2.5-7B") or {}


def test_more_tokens_more_activations_and_logits() -> None:
    short = estimate_memory(SEVEN_B, train_config(seq=1024, kernels="none"), gpus=1)
    long = estimate_memory(SEVEN_B, train_config(seq=4096, kernels="none"), gpus=1)
    assert long.parts["activations"] > 3.5 * short.parts["activations"]
    assert long.parts["logits"] == 4 * short.parts["logits"]
    assert long.parts["weights"] == short.parts["weights"]


def test_checkpointing_reduces_activations() -> None:
    on = estimate_memory(SEVEN_B, train_config(gradientCheckpointing=True), gpus=1)
    off = estimate_memory(SEVEN_B, train_config(gradientCheckpointing=False), gpus=1)
    assert off.parts["activations"] > 5 * on.parts["activations"]


def test_fused_loss_drops_the_logits_term() -> None:
    plain = estimate_memory(SEVEN_B, train_config(seq=8192, kernels="none"), gpus=1)
    fused = estimate_memory(SEVEN_B, train_config(seq=8192, kernels="auto"), gpus=1)
    assert plain.parts["logits"] == 8192 * 152064 * fit_estimate.LOGIT_BYTES
    assert fused.parts["logits"] <= fit_estimate.LOSS_CHUNK_BYTES * fit_estimate.LOSS_CHUNK_BUFFERS
    assert plain.total - fused.total > 10 * GIB


def test_loss_chunk_is_the_chunked_loss_chunk() -> None:
    pytest.importorskip("torch")
    from qwenft_trainer.chunked_loss import CHUNK_BYTES

    assert fit_estimate.LOSS_CHUNK_BYTES == CHUNK_BYTES


def _full(zero: int | None) -> TrainConfig:
    raw = train_config("full").model_dump()
    if zero is not None:
        raw["deepspeed"] = {"enabled": True, "zero_stage": zero}
    return TrainConfig.model_validate(raw)


def test_zero3_over_four_gpus_needs_less_than_one_gpu() -> None:
    one = estimate_memory(SEVEN_B, _full(3), gpus=1)
    four = estimate_memory(SEVEN_B, _full(3), gpus=4)
    assert four.total < one.total
    assert four.parts["optimizer"] == pytest.approx(one.parts["optimizer"] / 4, rel=1e-6)
    assert four.parts["weights"] < one.parts["weights"] / 3
    zero2 = estimate_memory(SEVEN_B, _full(2), gpus=4)
    params = ModelShape.from_config(SEVEN_B).parameters()
    assert zero2.parts["weights"] == params * 2  # ZeRO-2 keeps every (bf16) weight
    assert zero2.parts["optimizer"] == four.parts["optimizer"]


def test_full_fine_tune_without_deepspeed_holds_sixteen_bytes_per_parameter() -> None:
    estimate = estimate_memory(SEVEN_B, _full(None), gpus=1)
    states = sum(estimate.parts[p] for p in ("weights", "gradients", "optimizer"))
    assert states == pytest.approx(16 * ModelShape.from_config(SEVEN_B).parameters(), rel=1e-6)


def test_nf4_weights_are_about_a_quarter_of_bf16() -> None:
    lora = estimate_memory(SEVEN_B, train_config("lora"), gpus=1)
    qlora = estimate_memory(SEVEN_B, train_config("qlora"), gpus=1)
    ratio = qlora.parts["weights"] / lora.parts["weights"]
    # 4-bit decoder layers; embeddings and output head (1.1B of 7.6B) upcast to fp32
    assert 0.45 < ratio < 0.55
    single = TrainConfig.model_validate(
        {**train_config("qlora").model_dump(), "quantization": {"double_quant": False}}
    )
    assert estimate_memory(SEVEN_B, single, gpus=1).parts["weights"] > qlora.parts["weights"]


def test_gptq_bits_come_from_the_config() -> None:
    int4 = {
        **SEVEN_B,
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128},
    }
    int8 = {
        **SEVEN_B,
        "quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128},
    }
    four = estimate_memory(int4, train_config("qlora"), gpus=1).parts["weights"]
    eight = estimate_memory(int8, train_config("qlora"), gpus=1).parts["weights"]
    assert 1.5 < eight / four < 2.0


def test_verdicts_fits_tight_too_large() -> None:
    estimate = estimate_memory(SEVEN_B, train_config(), gpus=1)
    total = estimate.total
    assert judge(estimate, int(total / 0.5)).status == "fits"
    assert judge(estimate, int(total / 0.95)).status == "tight"
    too_large = judge(estimate, int(total * 0.8), fixes=["method: qlora (9.0 GiB)"])
    assert too_large.status == "too-large"
    assert "method: qlora (9.0 GiB)" in too_large.message and "GiB per GPU" in too_large.message


def test_fixes_that_fit_name_only_changes_that_fit() -> None:
    shape = ModelShape.from_config(SEVEN_B)
    config = train_config(seq=8192, kernels="none", gradientCheckpointing=False)
    plain = estimate_memory(shape, config, gpus=1).total
    fixes = fixes_that_fit(shape, config, 1, int(plain * 0.75))
    assert fixes, "some single change should fit in three quarters of the memory"
    for fix in fixes:
        assert float(fix.rsplit("(", 1)[1].split()[0]) <= plain * 0.75 / GIB + 0.05
    assert fixes_that_fit(shape, config, 1, 1 * GIB) == []


def test_docs_table_shows_the_current_estimates() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "gpu-fit.md").read_text(encoding="utf-8")
    for label, config, method, seq in (
        ("Qwen-7B LoRA | 256 ", QWEN_7B, "lora", 256),
        ("Qwen-7B LoRA | 8192 ", QWEN_7B, "lora", 8192),
        ("Qwen-7B Q-LoRA (Int4) | 256 ", QWEN_7B_INT4, "qlora", 256),
    ):
        row = next(line for line in doc.splitlines() if line.startswith(f"| {label}"))
        total = estimate_memory(config, qwen_script(method, seq), gpus=1).total / GIB
        assert f"**{total:.1f}**" in row, row


@pytest.mark.parametrize(
    "arch", ["qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe"]
)
def test_trainable_count_equals_the_trainers_adapter(arch: str) -> None:
    """The adapter the trainer builds (modeling.prepare_model: default targets, experts as
    tensors) has exactly the trainable parameters the estimate counts."""
    pytest.importorskip("peft")
    from qwenft_trainer import tiny
    from qwenft_trainer.modeling import prepare_model

    spec, config = _tiny_configs()[arch]
    train = TrainConfig.model_validate(
        {**train_config().model_dump(), "lora": {"r": 8, "alpha": 16}}
    )
    model = prepare_model(tiny.build_model(spec, config), train)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate_memory(config.to_dict(), train, gpus=1).trainable == real
