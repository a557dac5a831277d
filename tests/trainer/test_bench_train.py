"""The training benchmark's own pieces (bench/bench_train.py), without running it.

Covers: the generated dialogues are valid for the trainer and shaped like the seed data
(both record formats, multi-turn, Chinese, system prompts); the config the benchmark hands
to ``qwenft train`` is a valid TrainConfig with packing on; the MFU FLOP count for the
Qwen2.5-1.5B shape matches its published size (1.54B parameters, 1.31B without embeddings);
the goals against TRL and the recipe are judged from the table's rows, each one able to fail;
the default CPU model has Qwen's 151,936 embedding rows. The GPU shapes: Qwen3-8B's FLOP count
against a hand computation and its published 6.95B non-embedding parameters, the MoE
(routed experts) and Qwen3.5 (Gated DeltaNet + gated attention) counts by hand, and every
shape built at a tiny size on the CPU with its weight count equal to the model's own
parameters; the Q-LoRA / ZeRO-2 config is a valid TrainConfig; --arms and --method checks;
goals skip arms that did not run and cap Q-LoRA's memory; on CUDA the qwenft arm's rows
carry its GPU-fit estimate (qwenft_trainer.fit_estimate), with and without the overhead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.formats import parse_record

BENCH = Path(__file__).parents[2] / "bench" / "bench_train.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_dialogues_are_valid_and_seed_shaped(bench: ModuleType) -> None:
    records = bench.build_dialogues(300, seed=1)
    convs = [parse_record(r, "auto", f"bench:{i}") for i, r in enumerate(records)]
    assert sum("dialogue_sequence" in r for r in records) == 150
    assert sum("training_sample" in r for r in records) == 150
    replies = [sum(m.role == "assistant" for m in c.messages) for c in convs]
    assert min(replies) == 1 and max(replies) == 3
    assert 0.3 < sum(n > 1 for n in replies) / len(convs) < 0.8
    chinese = sum(
        any("\u4e00" <= ch <= "\u9fff" for m in c.messages for ch in m.content) for c in convs
    )
    assert 0.15 < chinese / len(convs) < 0.7
    systems = sum(c.messages[0].role == "system" for c in convs)
    assert 0.1 < systems / len(convs) < 0.3
    assert bench.build_dialogues(300, seed=1) == records


def test_benchmark_config_is_a_valid_packed_lora_run(bench: ModuleType, tmp_path: Path) -> None:
    args = argparse.Namespace(
        lora_r=8, rows_per_batch=1, grad_accum=4, learning_rate=1e-3, max_seq_length=512,
        device="cpu", seed=42, gradient_checkpointing=False, method="lora", deepspeed_zero=0,
    )  # fmt: skip
    raw = bench.qwenft_config(args, tmp_path / "model", tmp_path / "d.jsonl", tmp_path / "o")
    config = TrainConfig.model_validate(raw)
    assert config.training.packing and config.method == "lora"
    assert config.training.precision == "fp32" and config.metrics_port == 0
    assert not config.deepspeed.enabled


def test_qlora_zero2_config_is_valid(bench: ModuleType, tmp_path: Path) -> None:
    args = argparse.Namespace(
        lora_r=8, rows_per_batch=1, grad_accum=1, learning_rate=1e-3, max_seq_length=4096,
        device="cuda", seed=42, gradient_checkpointing=True, method="qlora", deepspeed_zero=2,
    )  # fmt: skip
    raw = bench.qwenft_config(args, tmp_path / "model", tmp_path / "d.jsonl", tmp_path / "o")
    config = TrainConfig.model_validate(raw)
    assert config.method == "qlora" and config.quantization is not None
    assert config.quantization.quant_type == "nf4" and config.training.precision == "bf16"
    assert config.deepspeed.enabled and config.deepspeed.zero_stage == 2


def test_flops_per_token_of_the_qwen25_1_5b_shape(bench: ModuleType) -> None:
    shape = bench.QWEN25_1_5B
    embedding = shape["vocab_size"] * shape["hidden_size"]
    weights = bench.flops_per_token(shape, context=0) / 6
    assert weights - embedding == pytest.approx(1.31e9, rel=0.02)
    assert weights == pytest.approx(1.54e9, rel=0.02)
    attention = bench.flops_per_token(shape, context=1000) - bench.flops_per_token(shape, 0)
    assert attention == 12 * 28 * 1536 * 1000


def test_flops_per_token_of_the_qwen3_8b_shape_by_hand(bench: ModuleType) -> None:
    # Per layer: q and o 4096x4096 each, k and v 4096x(8x128) each, MLP 3 x 4096x12288.
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288
    assert layer == 192_937_984
    head = 151_936 * 4096  # untied output head; the input embedding is a lookup
    assert bench.matmul_weights(bench.QWEN3_8B) == 36 * layer + head
    # Qwen3-8B's model card: 6.95B parameters without embeddings (norms are ~0.3M of them).
    assert 36 * layer == pytest.approx(6.95e9, rel=0.002)
    # 4096-token context: attention adds 12 x 36 layers x (32 x 128) x T.
    flops = bench.flops_per_token(bench.QWEN3_8B, context=4096)
    assert flops == 6 * (36 * layer + head) + 12 * 36 * 4096 * 4096
    assert flops == pytest.approx(5.265e10, rel=1e-3)


def test_moe_and_hybrid_flops_count_routed_experts_and_full_attention(bench: ModuleType) -> None:
    moe = bench.QWEN3_30B_A3B_REDUCED
    attention = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048
    routed = 8 * 3 * 2048 * 768 + 2048 * 128  # 8 of 128 experts, plus the router
    head = 151_936 * 2048
    assert bench.matmul_weights(moe) == 4 * (attention + routed) + head
    every = 128 * 3 * 2048 * 768 + 2048 * 128
    assert bench.matmul_weights(moe, active=False) == 4 * (attention + every) + head
    # Qwen3.5 reduced, written as its config.json nests it: 3 Gated DeltaNet layers, one
    # gated full-attention layer; only that one has a context term.
    text = {**bench.text_config(_qwen35_dict()), "model_type": "qwen3_5_text"}
    h, keys, values = 4096, 16 * 128, 32 * 128
    linear = h * (2 * keys + values) + h * values + 2 * h * 32 + values * h
    full = h * 16 * 256 * 2 + 2 * h * 4 * 256 + 16 * 256 * h
    mlp = 3 * h * 12288
    expected = 3 * linear + full + 4 * mlp + 248_320 * h
    config = {"text_config": text}
    assert bench.matmul_weights(config) == expected
    assert bench.flops_per_token(config, 100) - bench.flops_per_token(config, 0) == (
        12 * 1 * 16 * 256 * 100
    )


def _qwen35_dict() -> dict[str, object]:
    from transformers import Qwen3_5TextConfig

    return {"text_config": Qwen3_5TextConfig(num_hidden_layers=4).to_dict()}


TOKEN_IDS = {
    name: i
    for i, name in enumerate(
        ["<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
         "<|video_pad|>"]
    )
}  # fmt: skip
# Each shape's own fields at a size a CPU builds in a second.
SHRINK = {
    "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
}  # fmt: skip
SHRINK_BY_ARCH = {
    "qwen2.5-1.5b": {k: v for k, v in SHRINK.items() if k != "head_dim"},
    "qwen3-8b": SHRINK,
    "qwen3-30b-a3b-reduced": {**SHRINK, "num_experts": 8, "moe_intermediate_size": 32},
    "qwen3.5-reduced": {
        **SHRINK, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    },
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(SHRINK_BY_ARCH))
def test_each_shape_builds_and_its_weight_count_matches_the_model(
    bench: ModuleType, arch: str
) -> None:
    import torch

    assert set(SHRINK_BY_ARCH) == set(bench.SHAPES)
    config = bench.build_shape_config(arch, TOKEN_IDS, **SHRINK_BY_ARCH[arch])
    model = bench.instantiate(config)
    text = config.get_text_config()
    # The shape's own depth, layer pattern and expert routing survive the shrinking.
    family, fields = bench.SHAPES[arch]
    assert text.num_hidden_layers == fields["num_hidden_layers"]
    if "layer_types" in fields:
        assert text.layer_types == fields["layer_types"]
    if family == "qwen3_moe":
        assert text.num_experts_per_tok == 8 and text.num_experts == 8
    counted = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() >= 2 and "embed_tokens" not in name and "conv1d" not in name
        and "visual" not in name
    )  # fmt: skip
    if text.tie_word_embeddings:  # the shared head is listed once, as embed_tokens
        counted += text.vocab_size * text.hidden_size
    assert bench.matmul_weights(config.to_dict(), active=False) == counted
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 8, 256) and torch.isfinite(logits).all()


def test_arms_and_method_options(bench: ModuleType) -> None:
    args = bench.parse_args(["--model-arch", "qwen3-8b", "--arms", "trl", "--no-eval"])
    assert args.arms == ["qwenft", "trl"] and args.no_eval and args.method == "lora"
    with pytest.raises(SystemExit):
        bench.parse_args(["--arms", "qwenft,peft"])
    with pytest.raises(SystemExit):  # the recipe arm has no Q-LoRA
        bench.parse_args(["--method", "qlora", "--device", "cuda"])
    args = bench.parse_args(["--method", "qlora", "--device", "cuda", "--arms", "qwenft,trl"])
    assert args.method == "qlora" and args.arms == ["qwenft", "trl"]


def test_goals_skip_arms_that_did_not_run_and_cap_qlora_memory(bench: ModuleType) -> None:
    rows = {
        "trained tokens/s": [300.0, None, None],
        "useful-token share": [1.0, None, None],
        "held-out loss": [None, None, None],
        "peak GPU memory GiB": [11.5, None, None],
    }
    assert [ok for _, ok in bench.check_goals(rows)] == [True]
    capped = bench.check_goals(rows, peak_limit_gib=12.0)
    assert capped[-1] == ("peak GPU memory < 12 GiB (11.50 GiB)", True)
    rows["peak GPU memory GiB"] = [12.5, None, None]
    assert not bench.check_goals(rows, peak_limit_gib=12.0)[-1][1]


def _rows(speed: list[float], memory: list[float], loss: list[float]) -> dict[str, list[float]]:
    return {
        "trained tokens/s": speed,
        "useful-token share": [1.0, 0.0, 0.3],
        "held-out loss": loss,
        "peak RSS MiB": memory,
    }


def test_goals_are_judged_against_trl_and_the_recipe(bench: ModuleType) -> None:
    met = bench.check_goals(_rows([300.0, 100.0, 100.0], [500.0, 1000.0, 900.0], [5.0, 5.0, 6.0]))
    assert all(ok for _, ok in met) and len(met) == 5
    slow = bench.check_goals(_rows([190.0, 100.0, 100.0], [500.0, 1000.0, 900.0], [5.0, 5, 6]))
    assert [goal for goal, ok in slow if not ok] == ["trained tokens/s >= 2x TRL's (1.90x)"]
    heavy = bench.check_goals(_rows([300.0, 100.0, 100.0], [700.0, 1000.0, 900.0], [5.0, 5, 6]))
    assert [goal for goal, ok in heavy if not ok] == ["peak memory <= 0.6x TRL's (0.70x)"]
    worse = bench.check_goals(_rows([300.0, 100.0, 100.0], [500.0, 1000.0, 900.0], [5.1, 5, 6]))
    assert [goal.split(" (")[0] for goal, ok in worse if not ok] == [
        "held-out loss no worse than TRL's"
    ]


def test_the_default_model_has_qwens_vocabulary(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert args.vocab_size == 151_936 and args.model_arch == "tiny" and args.device == "cpu"
    assert args.max_seq_length == args.baseline_max_seq_length * args.baseline_batch_size


def test_estimate_rows_give_the_qwenft_arm_the_fit_estimate(
    bench: ModuleType, tmp_path: Path
) -> None:
    from qwenft_trainer.fit_estimate import estimate_memory
    from qwenft_trainer.model_shapes import known_config

    model = tmp_path / "model"
    model.mkdir()
    shape = known_config("Qwen/Qwen3-8B") or {}
    (model / "config.json").write_text(json.dumps(shape))
    args = argparse.Namespace(
        lora_r=8, rows_per_batch=1, grad_accum=1, learning_rate=1e-3, max_seq_length=4096,
        device="cuda", seed=42, gradient_checkpointing=True, method="qlora", deepspeed_zero=0,
    )  # fmt: skip
    raw = bench.qwenft_config(args, model, tmp_path / "d.jsonl", tmp_path / "o")
    rows = bench.estimate_rows(raw, model)
    allocated, total = (rows[k][0] for k in sorted(rows))
    expected = estimate_memory(shape, TrainConfig.model_validate(raw), gpus=1)
    assert total == expected.total / 2**30
    assert allocated == (expected.total - expected.parts["overhead"]) / 2**30
    assert rows[next(iter(rows))][1:] == [None, None]  # only the qwenft arm is estimated
