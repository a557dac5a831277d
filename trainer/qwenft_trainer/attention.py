"""Which attention kernel a run trains with, decided from the device, the model and the kernels.

Packed rows only pay off when the attention kernel skips the work between samples. sdpa
keeps packed samples apart through a block-diagonal mask that transformers materialises
from the position ids, ``[rows, 1, L, L]`` per batch: fine on a CPU, where it is the
reference path every test runs, but on a GPU it forces sdpa off its flash kernels and
costs memory quadratic in the row length. On CUDA a run therefore uses a kernel that
reads the sample boundaries instead of a mask:

- ``flex_attention`` (torch's FlexAttention, through transformers) is the default on CUDA.
  transformers builds a block-sparse ``BlockMask`` document mask from the restarting
  position ids of packed rows (``masking_utils.find_packed_sequence_indices``), so blocks
  that cross samples are skipped and no ``[L, L]`` tensor exists. It ships with torch: no
  install, no CUDA build, the same wheel the tests run. Its kernel is compiled per shape,
  so packed rows are padded to ``max_seq_length`` (:func:`row_length`) and every batch has
  the same shape; a shape that changed would recompile.
- ``flash_attention_2`` runs variable-length segments of a flattened batch
  (``cu_seqlens``). It needs the ``flash-attn`` package, which PyPI only has as a CUDA
  source build that takes hours and must match torch exactly, so the image does not ship
  it; a run picks it only where it is installed and the model has no flex support
  (Qwen3-Next and Qwen3.5 in transformers 5.24), or when ``training.attention`` asks.
- ``sdpa`` everywhere else: on the CPU, and on CUDA where neither kernel can run for the
  model (the reason names each one skipped and why, e.g. fp32 for flash_attention_2).

Why flex_attention over flash-attention as the CUDA default: it installs with torch and
skips whole blocks across samples as FA2's varlen kernel does; PyTorch's FlexAttention post
(pytorch.org/blog/flexattention) puts it near FlashAttention-2's speed (about 90% forward,
85% backward, measured on A100). A flash-attn build would pin the image to one torch / CUDA
pair for a gap of that size. No H100/H200 numbers of this project back the choice yet:
``bench/gpu-check.sh``'s train step measures the CUDA path's tokens/s.

The decision (:func:`decide_attention`) is pure; :func:`kernel_problems_here` reads what
this process can import. :mod:`qwenft_trainer.modeling` loads the model with the choice,
the validator predicts it for a CUDA run, and :mod:`qwenft_trainer.packing_mode` picks the
batch layout that kernel needs and probes it at start-up.

    choice = decide_attention(requested="auto", cuda=True, precision="bf16",
                              supported=supported_implementations(model_class),
                              problems=kernel_problems_here(cuda=True))
    log.info("%s", choice.log_line())
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from qwenft_trainer.config import AttentionSetting, Precision

AttentionImplementation = Literal["sdpa", "flex_attention", "flash_attention_2"]
IMPLEMENTATIONS: tuple[AttentionImplementation, ...] = get_args(AttentionImplementation)
# The model class attribute that says transformers can run it with each implementation.
SUPPORT_FLAGS: dict[AttentionImplementation, str] = {
    "sdpa": "_supports_sdpa",
    "flex_attention": "_supports_flex_attn",
    "flash_attention_2": "_supports_flash_attn",
}
# Kernels compiled per shape: packed rows are padded to one fixed length for them.
STATIC_SHAPE_KERNELS = frozenset({"flex_attention"})
# Kernels that see sample boundaries only as cu_seqlens of a flattened batch.
VARLEN_KERNELS = frozenset({"flash_attention_2", "flash_attention_3", "flash_attention_4"})
HALF_PRECISIONS = frozenset({"bf16", "fp16"})


@dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation a run loads the model with, and why."""

    implementation: AttentionImplementation
    reason: str

    def log_line(self) -> str:
        return f"attention: {self.implementation} ({self.reason})"


class AttentionError(ValueError):
    """``training.attention`` asks for a kernel that can't run here (the message says why)."""


def supported_implementations(model_class: Any) -> frozenset[str]:
    """The implementations transformers can run ``model_class`` (a PreTrainedModel class) with.

    An unknown class (remote code, not loaded yet) is assumed to run sdpa only.
    """
    if model_class is None:
        return frozenset({"sdpa"})
    return frozenset(
        name for name, flag in SUPPORT_FLAGS.items() if getattr(model_class, flag, False)
    )


def kernel_problems_here(*, cuda: bool) -> dict[AttentionImplementation, str | None]:
    """Why each implementation can't run in this process (None: it can)."""
    from transformers.utils import is_flash_attn_2_available, is_torch_flex_attn_available

    problems: dict[AttentionImplementation, str | None] = {"sdpa": None}
    problems["flex_attention"] = (
        None if is_torch_flex_attn_available() else "this torch has no flex_attention"
    )
    if not cuda:
        problems["flash_attention_2"] = "flash-attn needs a CUDA device"
    elif importlib.util.find_spec("flash_attn") is None:
        problems["flash_attention_2"] = "the flash-attn package is not installed"
    elif not is_flash_attn_2_available():
        problems["flash_attention_2"] = "flash-attn is installed but can't run on this GPU"
    else:
        problems["flash_attention_2"] = None
    return problems


def decide_attention(
    *,
    requested: AttentionSetting,
    cuda: bool,
    precision: Precision,
    supported: frozenset[str],
    problems: Mapping[AttentionImplementation, str | None],
) -> AttentionChoice:
    """The implementation for a run (``precision``: the dtype attention computes in).

    ``auto`` takes sdpa on the CPU, and on CUDA the first of flex_attention and
    flash_attention_2 that the model supports and this process can run, else sdpa.
    An explicit ``training.attention`` that can't run raises :class:`AttentionError`.
    """
    if requested != "auto":
        problem = _problem(requested, precision, supported, problems)
        if problem is not None:
            raise AttentionError(
                f"training.attention is {requested}, but {problem}; set training.attention "
                "to auto (or sdpa)"
            )
        return AttentionChoice(requested, f"training.attention is {requested}")
    if not cuda:
        return AttentionChoice(
            "sdpa",
            "no CUDA device: sdpa with a block-diagonal mask built from the position ids",
        )
    skipped = []
    for implementation in ("flex_attention", "flash_attention_2"):
        problem = _problem(implementation, precision, supported, problems)
        if problem is None:
            return AttentionChoice(implementation, _WHY[implementation])
        skipped.append(f"not {implementation}: {problem}")
    return AttentionChoice(
        "sdpa", f"{'; '.join(skipped)}; sdpa with a block-diagonal mask from the position ids"
    )


_WHY: dict[AttentionImplementation, str] = {
    "flex_attention": "CUDA: flex_attention with a block-sparse document mask from the "
    "packed position ids, rows padded to max_seq_length so its kernels compile once",
    "flash_attention_2": "CUDA: flash_attention_2 runs packed samples as variable-length "
    "segments of a flattened batch (cu_seqlens)",
}


def _problem(
    implementation: AttentionImplementation,
    precision: Precision,
    supported: frozenset[str],
    problems: Mapping[AttentionImplementation, str | None],
) -> str | None:
    if implementation not in supported:
        return f"transformers has no {implementation} path for this model"
    problem = problems.get(implementation)
    if problem:
        return problem
    if implementation == "flash_attention_2" and precision not in HALF_PRECISIONS:
        return f"flash_attention_2 runs in bf16 or fp16 only, not {precision}"
    return None


def row_length(implementation: str, max_seq_length: int) -> int | None:
    """The fixed width packed rows are padded to for ``implementation`` (None: longest row)."""
    return max_seq_length if implementation in STATIC_SHAPE_KERNELS else None
