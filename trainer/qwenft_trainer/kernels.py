"""Which loss path a run trains with (``training.kernels``), and putting it in place.

The plain path is the model's own forward: full logits, then ``ForCausalLMLoss``. At Qwen's
vocabulary those logits and their gradient are most of a small model's training memory,
so a run computes its loss without them where it can:

- ``liger`` (CUDA): Liger Kernel's patches for the architecture (fused linear cross-entropy,
  RMSNorm, RoPE, SwiGLU / experts), applied to the loaded model before PEFT wraps it. Liger
  reads ``lm_head.weight`` directly, which ZeRO-3 partitions, so it is not used there.
- ``chunked`` (any device): :mod:`qwenft_trainer.chunked_loss`, cross-entropy over chunks of
  trained rows, never the whole logits.
- ``plain``: ``training.kernels: none``.

``auto`` picks Liger on CUDA for the architectures it patches, the chunked loss elsewhere.
The decision is pure (:func:`decide_kernels`); :func:`apply_kernels` carries it out.

    decision = apply_kernels(model, config, cuda=True)
    log.info("%s", decision.log_line())
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qwenft_trainer.config import Kernels, TrainConfig

log = logging.getLogger(__name__)

LossPath = Literal["liger", "chunked", "plain"]
LIGER_MODULE = "liger_kernel.transformers"
# model_type -> Liger's instance patch (liger_kernel.transformers.monkey_patch).
LIGER_PATCHES = {
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
    "qwen3_moe": "apply_liger_kernel_to_qwen3_moe",
    "qwen3_next": "apply_liger_kernel_to_qwen3_next",
    "qwen3_5": "apply_liger_kernel_to_qwen3_5",
    "qwen3_5_moe": "apply_liger_kernel_to_qwen3_5_moe",
}


class KernelError(RuntimeError):
    """``training.kernels: liger`` was asked for where Liger can't run."""


@dataclass(frozen=True)
class KernelDecision:
    """The loss path a run trains with, and why."""

    path: LossPath
    reason: str

    def log_line(self) -> str:
        return f"loss path: {self.path} ({self.reason})"


def liger_problem_here(*, cuda: bool, model_type: str, zero3: bool) -> str | None:
    """Why Liger can't patch this model here, or None."""
    if not cuda:
        return "Liger Kernel's Triton kernels need a CUDA device"
    if model_type not in LIGER_PATCHES:
        return f"Liger Kernel has no patches for model_type '{model_type}'"
    if zero3:
        return "Liger's fused loss reads lm_head.weight directly, which ZeRO-3 partitions"
    try:
        module = importlib.import_module(LIGER_MODULE)
    except Exception as err:  # not installed, or its triton import failed
        return f"liger-kernel is not importable ({type(err).__name__}: {err})"
    if getattr(module, LIGER_PATCHES[model_type], None) is None:
        return f"{LIGER_MODULE} has no {LIGER_PATCHES[model_type]}"
    return None


def decide_kernels(requested: Kernels, *, liger_problem: str | None) -> KernelDecision:
    """The loss path for ``training.kernels`` given why Liger can't run here (None: it can)."""
    if requested == "none":
        return KernelDecision("plain", "training.kernels is none: full logits, the model's loss")
    if liger_problem is None:
        return KernelDecision(
            "liger",
            "Liger Kernel: fused linear cross-entropy (no logits), RMSNorm, RoPE and SwiGLU "
            "kernels for this architecture",
        )
    if requested == "liger":
        raise KernelError(f"training.kernels is liger, but {liger_problem}; use auto or none")
    return KernelDecision(
        "chunked",
        f"{liger_problem}; cross-entropy over chunks of trained rows, never the full logits",
    )


def _zero3(config: TrainConfig) -> bool:
    return config.deepspeed.enabled and config.deepspeed.zero_stage == 3


def apply_kernels(model: Any, config: TrainConfig, *, cuda: bool) -> KernelDecision:
    """Decide the loss path and patch ``model`` (bare, before PEFT) for it."""
    requested = config.training.kernels
    problem = None
    if requested != "none":
        problem = liger_problem_here(
            cuda=cuda, model_type=str(model.config.model_type), zero3=_zero3(config)
        )
    decision = decide_kernels(requested, liger_problem=problem)
    if decision.path == "liger":
        patch = getattr(
            importlib.import_module(LIGER_MODULE), LIGER_PATCHES[model.config.model_type]
        )
        patch(model=model)
    elif decision.path == "chunked":
        from qwenft_trainer.chunked_loss import install_chunked_loss

        install_chunked_loss(model)
    return decision
