"""Pre-quantized bases: Qwen's GPTQ and AWQ releases, trained with a LoRA on top.

Qwen publishes its instruct models already quantized (``Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4``,
``-GPTQ-Int8``, ``-AWQ``; Qwen's original Q-LoRA recipe trains on ``Qwen-7B-Chat-Int4``, a
GPTQ checkpoint). Such a checkpoint says so in its ``config.json`` (``quantization_config``
with a ``quant_method``); transformers then loads its packed weights with their own kernels
(gptqmodel), and peft adapts those layers directly. Quantizing it again with bitsandbytes is
impossible, so ``method: qlora`` on such a base means "LoRA over the checkpoint's own
quantization", and everything that can't work is refused before any GPU is taken, with the
fix: ``method: lora`` or ``full`` on it, bitsandbytes-only settings that contradict it, and a
merge into its packed weights (merge into the un-quantized model instead).

    found = checkpoint_quantization(config_dict)   # None for a bf16 checkpoint
    problems = method_problems(found, name=..., method="qlora", quantization=...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwenft_trainer.config import Method, QuantizationSettings

if TYPE_CHECKING:
    from transformers.utils.quantization_config import QuantizationConfigMixin

# Pre-quantized formats a LoRA trains over (transformers' quantizers, gptqmodel kernels).
TRAINABLE_METHODS = ("gptq", "awq")
# gptqmodel's kernel choice among those with a backward pass (its fastest inference kernels,
# Marlin and ExLlama, have none); transformers takes it as a loading attribute.
TRAINABLE_BACKEND = "auto_trainable"
# The suffixes Qwen gives its quantized releases; the un-quantized model drops them.
QUANTIZED_SUFFIX = re.compile(r"-(GPTQ-Int[48]|AWQ|Int[48]|FP8|GGUF|bnb-4bit)$", re.IGNORECASE)
# Defaults of the bitsandbytes-only settings: a value other than these was written on purpose.
_BNB_ONLY_FIELDS = ("quant_type", "double_quant")


@dataclass(frozen=True)
class CheckpointQuantization:
    """What a checkpoint's ``quantization_config`` says about its packed weights."""

    method: str
    bits: int | None = None
    group_size: int | None = None

    @property
    def trainable(self) -> bool:
        return self.method in TRAINABLE_METHODS

    def describe(self) -> str:
        """``GPTQ (4-bit, group size 128)``."""
        details = [f"{self.bits}-bit"] if self.bits else []
        if self.group_size:
            details.append(f"group size {self.group_size}")
        return self.method.upper() + (f" ({', '.join(details)})" if details else "")


def checkpoint_quantization(config: dict[str, Any]) -> CheckpointQuantization | None:
    """The quantization a ``config.json`` declares, or None for an un-quantized checkpoint."""
    found = config.get("quantization_config")
    if not isinstance(found, dict):
        text = config.get("text_config")
        found = text.get("quantization_config") if isinstance(text, dict) else None
    if not isinstance(found, dict):
        return None
    method = str(found.get("quant_method") or "unknown").lower()
    if method == "bitsandbytes" or found.get("load_in_4bit") or found.get("load_in_8bit"):
        method = "bitsandbytes"
    bits = found.get("bits", found.get("w_bit"))
    group = found.get("group_size", found.get("q_group_size"))
    return CheckpointQuantization(
        method=method,
        bits=bits if isinstance(bits, int) else None,
        group_size=group if isinstance(group, int) else None,
    )


def build_checkpoint_loading_config(found: CheckpointQuantization) -> QuantizationConfigMixin:
    """Loading attributes for a GPTQ / AWQ checkpoint: its own settings, trainable kernels.

    transformers keeps the checkpoint's ``quantization_config`` and overrides only the
    loading attributes (``backend``) with these.
    """
    from transformers import AwqConfig, GPTQConfig

    if found.method not in TRAINABLE_METHODS:
        raise ValueError(f"no LoRA training over {found.describe()} checkpoints")
    factory = GPTQConfig if found.method == "gptq" else AwqConfig
    return factory(bits=found.bits or 4, backend=TRAINABLE_BACKEND)


def unquantized_name(name: str) -> str | None:
    """The un-quantized release a quantized one was made from, by Qwen's naming, if it says.

    ``Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4`` -> ``Qwen/Qwen2.5-7B-Instruct``; a directory
    named like a release gives the release's name (a suggestion for a message, nothing more).
    """
    stripped = QUANTIZED_SUFFIX.sub("", name.rstrip("/"))
    return stripped if stripped != name.rstrip("/") else None


def _instead(name: str) -> str:
    suggestion = unquantized_name(name)
    return f"the un-quantized model (e.g. {suggestion})" if suggestion else "the un-quantized model"


def method_problems(
    found: CheckpointQuantization | None,
    *,
    name: str,
    method: Method,
    quantization: QuantizationSettings | None,
) -> list[str]:
    """Why ``method`` (and its ``quantization`` settings) can't train on this checkpoint."""
    if found is None:
        return []
    what = f"base model {name} is already quantized: {found.describe()} (its config.json)"
    if not found.trainable:
        return [
            f"{what}; qwenft trains a LoRA over GPTQ or AWQ checkpoints only: use {_instead(name)}"
        ]
    if method == "lora":
        return [
            f"{what}; method 'lora' loads a bf16 base: set method: qlora to train a LoRA over "
            f"its own {found.method.upper()} weights, or use {_instead(name)} with method lora"
        ]
    if method == "full":
        return [
            f"{what}; packed {found.method.upper()} weights can't be fine-tuned in full: set "
            f"method: qlora to train a LoRA over them, or use {_instead(name)} with method full"
        ]
    problems: list[str] = []
    if quantization is not None:
        defaults = QuantizationSettings()
        contradicting = [
            f"quantization.{field}={getattr(quantization, field)!r}"
            for field in _BNB_ONLY_FIELDS
            if getattr(quantization, field) != getattr(defaults, field)
        ]
        if contradicting:
            problems.append(
                f"{what}; {' and '.join(contradicting)} configure bitsandbytes, which can't "
                f"re-quantize it: remove them (the checkpoint's own {found.method.upper()} "
                "quantization is used; only quantization.compute_dtype applies)"
            )
    return problems


def merge_problem(found: CheckpointQuantization | None, *, name: str) -> str | None:
    """Why an adapter can't be merged into this checkpoint (its weights are packed)."""
    if found is None:
        return None
    return (
        f"base model {name} is {found.describe()}-quantized: an adapter can't be merged into "
        f"packed {found.method.upper()} weights; merge into {_instead(name)} (qwenft merge "
        "--base, or spec.merge.base in a QwenFineTune), or serve the adapter over "
        f"{name} unmerged (spec.merge.enabled: false)"
    )
