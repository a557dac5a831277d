"""The training benchmark's own pieces (bench/bench_train.py), without running it.

Covers: the generated dialogues are valid for the trainer and shaped like the seed data
(both record formats, multi-turn, Chinese, system prompts); the config the benchmark hands
to ``qwenft train`` is a valid TrainConfig with packing on; the MFU FLOP count for the
Qwen2.5-1.5B shape matches its published size (1.54B parameters, 1.31B without embeddings);
the goals against TRL and the recipe are judged from the table's rows, each one able to fail;
the default CPU model has Qwen's 151,936 embedding rows.
"""

from __future__ import annotations

import argparse
import importlib.util
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
        device="cpu", seed=42, gradient_checkpointing=False,
    )  # fmt: skip
    raw = bench.qwenft_config(args, tmp_path / "model", tmp_path / "d.jsonl", tmp_path / "o")
    config = TrainConfig.model_validate(raw)
    assert config.training.packing and config.method == "lora"
    assert config.training.precision == "fp32" and config.metrics_port == 0


def test_flops_per_token_of_the_qwen25_1_5b_shape(bench: ModuleType) -> None:
    shape = bench.QWEN25_1_5B
    embedding = shape["vocab_size"] * shape["hidden_size"]
    weights = bench.flops_per_token(shape, context=0) / 6
    assert weights - embedding == pytest.approx(1.31e9, rel=0.02)
    assert weights == pytest.approx(1.54e9, rel=0.02)
    attention = bench.flops_per_token(shape, context=1000) - bench.flops_per_token(shape, 0)
    assert attention == 12 * 28 * 1536 * 1000


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
