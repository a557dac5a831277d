"""Trainer-test fixtures: tiny models of every architecture and PEFT adapters, built once.

``tiny_arch_dir(arch)`` is the tiny random model of one architecture (qwen2 is the session's
``tiny_model_dir``). ``make_adapter`` saves a LoRA adapter with
``get_peft_model(...).save_pretrained`` and random (non-zero) B matrices, so merging it
changes the model's logits measurably.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

AdapterFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_arch_dir(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``tiny_arch_dir(arch) -> Path``: the tiny model of ``arch``, built on first use."""
    built: dict[str, Path] = {"qwen2": tiny_model_dir}

    def build(arch: str) -> Path:
        from qwenft_trainer.tiny import TINY_ARCHS, TinyModelSpec, build_tiny_qwen

        if arch not in TINY_ARCHS:
            raise ValueError(f"unknown tiny arch {arch!r}; one of {', '.join(TINY_ARCHS)}")
        if arch not in built:
            spec = TinyModelSpec(arch=arch)
            built[arch] = build_tiny_qwen(tmp_path_factory.mktemp(f"tiny-{arch}"), spec)
        return built[arch]

    return build


@pytest.fixture(scope="session")
def make_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    cache: dict[str, Path] = {}

    def build(
        name: str,
        *,
        r: int = 8,
        base: Path | None = None,
        target_modules: list[str] | None = None,
        modules_to_save: list[str] | None = None,
        summary: dict[str, Any] | None = None,
        scale: float = 0.1,
        seed: int = 1,
    ) -> Path:
        if name in cache:
            return cache[name]
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base_dir = base or tiny_model_dir
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        config = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=target_modules
            or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            modules_to_save=modules_to_save,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param_name, param in peft_model.named_parameters():
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
        path = tmp_path_factory.mktemp(f"adapter-{name}") / "adapter"
        peft_model.save_pretrained(str(path))
        if summary is not None:
            (path.parent / "summary.json").write_text(json.dumps(summary))
        cache[name] = path
        return path

    return build


@pytest.fixture(scope="session")
def trained_adapter(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """``trained_adapter("lora" | "qlora", r=8, modules_to_save=None)``: a real trainer run.

    Returns the run's output directory, which holds what ``qwenft train`` leaves: the
    adapter, the tokenizer and ``summary.json``. Each variant trains once per session
    (4 steps on the tiny model, a few seconds).
    """
    cache: dict[tuple[object, ...], Path] = {}

    def train(
        method: str = "lora", *, r: int = 8, modules_to_save: list[str] | None = None
    ) -> Path:
        key = (method, r, tuple(modules_to_save or ()))
        if key in cache:
            return cache[key]
        from qwenft_trainer.train import main
        from trainrun import write_config, write_dialogues

        root = tmp_path_factory.mktemp(f"trained-{method}-r{r}")
        data = write_dialogues(root / "train.jsonl", count=24)
        training: dict[str, Any] = {"max_steps": 4, "learning_rate": 0.02}
        extra: dict[str, Any] = {
            "lora": {"r": r, "alpha": 2 * r, "modules_to_save": modules_to_save or []}
        }
        if method == "qlora":
            training["precision"] = "bf16"
            extra["method"] = "qlora"
            extra["quantization"] = {"quant_type": "nf4", "compute_dtype": "bf16"}
        config = write_config(
            root / "train.yaml", tiny_model_dir, data, root / "out", training=training, **extra
        )
        assert main(["--config", str(config)]) == 0, f"training {key} failed"
        cache[key] = root / "out"
        return cache[key]

    return train
