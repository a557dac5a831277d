"""Trainer-test fixtures: PEFT adapters on the tiny model, built once per session.

``make_adapter`` saves a LoRA adapter with ``get_peft_model(...).save_pretrained`` and
random (non-zero) B matrices, so merging it changes the model's logits measurably.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

AdapterFactory = Callable[..., Path]


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
