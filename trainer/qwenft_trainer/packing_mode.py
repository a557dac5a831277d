"""How a run packs its samples: decided from the model and the kernels at hand, then checked.

Packing only pays if it is exact: a sample's logits inside a packed row must be the logits
it gets alone. Attention layers keep samples apart through restarting position ids (sdpa
and eager build a block-diagonal causal mask from them, flash-attention reads the same
boundaries), so attention-only models pack into padded rows: sdpa and eager through a
dense mask, flex_attention through a block-sparse document mask (rows padded to one
fixed width, :func:`qwenft_trainer.attention.row_length`). flash-attention kernels only see
boundaries as ``cu_seqlens`` of a flattened batch, so with them every model packs
flattened. Linear-attention layers (the
Gated DeltaNet of Qwen3-Next and Qwen3.5) carry a recurrent state and a short convolution
along the row: they can only keep samples apart in a flattened batch whose ``cu_seqlens``
their kernel reads (flash-linear-attention, on CUDA). transformers' pure-PyTorch fallback
ignores the boundaries, so there a packed sample would read the one before it, and packing
is off.

The rules are half of the decision. :func:`probe_packing` is the other half: at start-up it
runs two short random sequences packed, exactly as the chosen collator batches them, and
alone, and compares the logits. A model that leaks for a reason the rules don't know (a new
layer type, a kernel that drops the boundaries) turns packing off for the run instead of
training on leaked context.

    decision = configure_model_for_packing(model, requested=True, pad_token_id=pad_id)
    log.info("%s", decision.log_line())

It is over 300 lines because the packing decision, the collator it picks and the start-up
probe that checks it on the loaded model must agree, so they are kept side by side.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from qwenft_trainer.packing import PackedCollator, PaddingCollator

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qwenft_trainer.config import TrainConfig

log = logging.getLogger(__name__)

PackingMode = Literal["padded_rows", "flattened_varlen", "off"]
PACKING_MODES: tuple[PackingMode, ...] = get_args(PackingMode)
# Attention implementations that honour packed position ids without an attention mask.
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# Attention implementations that see sample boundaries only in a flattened batch (cu_seqlens).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Layer types (config.layer_types) that attend through a mask: restarting positions suffice.
ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "chunked_attention"})
LINEAR_ATTENTION = "linear_attention"
# The kernel that runs Gated DeltaNet per segment of a flattened batch (cu_seqlens).
VARLEN_LINEAR_KERNEL = "fla.ops.gated_delta_rule"
# Random sequences of the start-up probe: the second one starts where a leak would show.
PROBE_LENGTHS = (13, 11)


@dataclass(frozen=True)
class PackingDecision:
    """The packing mode a run trains with, and why."""

    mode: PackingMode
    reason: str

    @property
    def packed(self) -> bool:
        return self.mode != "off"

    def log_line(self) -> str:
        return f"packing: {self.mode} ({self.reason})"


@dataclass(frozen=True)
class ProbeResult:
    """Largest logit difference between packed and separate runs, and what is allowed."""

    mode: PackingMode
    max_abs_diff: float
    tolerance: float
    error: str | None = None  # the packed forward refused to run (a kernel said why)

    @property
    def exact(self) -> bool:
        return self.error is None and self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.mode} packing failed to run: {self.error}"
        return (
            f"{self.mode} packing changed the logits by {self.max_abs_diff:.2g} "
            f"(tolerance {self.tolerance:.1g})"
        )


def _field(section: Any, name: str) -> Any:
    if isinstance(section, Mapping):
        return section.get(name)
    return getattr(section, name, None)


def layer_types(config: Any) -> list[str]:
    """``layer_types`` of a model config (or of its ``text_config``, multimodal checkpoints).

    ``config`` is a transformers config or the dict of a ``config.json``.
    """
    for section in (config, _field(config, "text_config")):
        types = _field(section, "layer_types") if section is not None else None
        if types:
            return [str(kind) for kind in types]
    return []


def linear_kernel_problem_here(*, cuda: bool) -> str | None:
    """Why linear-attention layers can't run a flattened batch per segment here, or None."""
    if not cuda:
        return "flash-linear-attention, which keeps them apart, needs a CUDA device"
    try:
        kernels = importlib.import_module(VARLEN_LINEAR_KERNEL)
    except Exception as err:  # not installed, or its triton/CUDA import failed
        return f"flash-linear-attention is not importable ({type(err).__name__}: {err})"
    if getattr(kernels, "chunk_gated_delta_rule", None) is None:
        return f"{VARLEN_LINEAR_KERNEL} has no chunk_gated_delta_rule"
    return None


def decide_packing(
    config: Any,
    *,
    requested: bool,
    attn_implementation: str | None,
    linear_kernel_problem: str | None,
) -> PackingDecision:
    """The packing mode the model's layers and the available kernels allow (no probe)."""
    if not requested:
        return PackingDecision("off", "training.packing is false")
    implementation = attn_implementation or "eager"
    if implementation not in (*PACKING_ATTENTION, *VARLEN_ATTENTION):
        return PackingDecision(
            "off",
            f"attention implementation '{implementation}' can't keep packed samples apart "
            f"(packing needs one of {', '.join((*PACKING_ATTENTION, *VARLEN_ATTENTION))})",
        )
    kinds = layer_types(config)
    stateful = sorted({kind for kind in kinds if kind not in ATTENTION_LAYER_TYPES})
    unknown = [kind for kind in stateful if kind != LINEAR_ATTENTION]
    if unknown:
        return PackingDecision(
            "off",
            f"layer type(s) {', '.join(unknown)} carry state along the row and no kernel "
            "known here keeps packed samples apart in them",
        )
    if stateful:
        linear = sum(1 for kind in kinds if kind == LINEAR_ATTENTION)
        share = f"{linear} of {len(kinds)} layers are linear attention (Gated DeltaNet)"
        if linear_kernel_problem:
            return PackingDecision(
                "off",
                f"{share}; transformers' PyTorch fallback for them ignores sample "
                f"boundaries and {linear_kernel_problem}",
            )
        return PackingDecision(
            "flattened_varlen",
            f"{share}; flash-linear-attention runs each packed sample of a flattened batch "
            "on its own (cu_seqlens)",
        )
    if implementation in VARLEN_ATTENTION:
        return PackingDecision(
            "flattened_varlen",
            f"attention layers only: {implementation} runs each packed sample of a "
            "flattened batch on its own (cu_seqlens)",
        )
    mask = (
        "a block-sparse document mask"
        if implementation == "flex_attention"
        else "a block-diagonal mask"
    )
    return PackingDecision(
        "padded_rows",
        f"attention layers only: position ids restart per sample and {implementation} "
        f"attention builds {mask} from them",
    )


def build_packing_collator(
    mode: PackingMode, *, pad_token_id: int, row_length: int | None = None
) -> PackedCollator:
    """The collator that batches packed rows for ``mode`` (not for ``off``).

    ``row_length`` pads padded rows to one width (the attention kernel compiles per shape).
    """
    if mode == "off":
        raise ValueError("packing mode 'off' batches with the padding collator")
    if mode == "flattened_varlen":
        return PackedCollator(
            pad_token_id=pad_token_id, flatten=True, return_flash_attn_kwargs=True
        )
    return PackedCollator(pad_token_id=pad_token_id, row_length=row_length)


def build_collator(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    mode: PackingMode | None = None,
    *,
    row_length: int | None = None,
) -> Any:
    """The batch collator of packing ``mode`` (default: what ``training.packing`` asks for).

    ``row_length`` (:func:`qwenft_trainer.attention.row_length`) gives every batch one
    width: packed rows, or unpacked samples padded to ``max_seq_length``.
    """
    if mode is None:
        mode = "padded_rows" if config.training.packing else "off"
    if mode != "off":
        # A short row's pad segment must use the real pad id, or the Trainer's count of
        # non-padding tokens would include it.
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return build_packing_collator(mode, pad_token_id=pad_id, row_length=row_length)
    return PaddingCollator(
        tokenizer, max_seq_length=config.training.max_seq_length, pad_to_max=row_length is not None
    )


def probe_tolerance(dtype: torch.dtype, logit_scale: float) -> float:
    """How far packed and separate logits may differ from rounding alone.

    fp32: 1e-4 + 1e-5 of the largest logit (rounding differs by ~1e-6 of it between the
    two layouts; a leak on the tiny test models moves logits by >= 1e-2). Half precision:
    8 units of rounding at the logits' magnitude, because kernels of different shapes round
    differently; a leak changes a sample's context, and its logits, by far more.
    """
    import torch

    if dtype in (torch.float32, torch.float64):
        return 1e-4 + 1e-5 * logit_scale
    return 8 * float(torch.finfo(dtype).eps) * max(1.0, logit_scale)


def probe_packing(
    model: PreTrainedModel,
    mode: PackingMode,
    *,
    pad_token_id: int,
    lengths: Sequence[int] = PROBE_LENGTHS,
    seed: int = 0,
    row_length: int | None = None,
) -> ProbeResult:
    """Logits of random sequences packed in one row (batched for ``mode``) vs alone.

    ``row_length`` is the width training pads packed rows to, so the probe runs the
    batch shape (and the attention mask) training will.

    A packed forward that raises (transformers' fallback kernels refuse ``cu_seqlens``
    they can't honour) is a result too: not exact, with the error.
    """
    import torch

    device = next(model.parameters()).device
    vocab = int(model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
    row = {
        "input_ids": [token for seq in sequences for token in seq],
        "labels": [token for seq in sequences for token in seq],
        "position_ids": [p for seq in sequences for p in range(len(seq))],
    }
    collate = build_packing_collator(mode, pad_token_id=pad_token_id, row_length=row_length)
    batch = collate([row])
    inputs = {k: _to(v, device) for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                packed = model(**inputs, use_cache=False).logits[0].float()
            except (ValueError, RuntimeError) as err:
                return ProbeResult(mode, float("inf"), 0.0, error=f"{type(err).__name__}: {err}")
            worst, scale, start = 0.0, 0.0, 0
            for seq in sequences:
                ids = torch.tensor([seq], device=device)
                alone = model(input_ids=ids, use_cache=False).logits[0].float()
                piece = packed[start : start + len(seq)]
                worst = max(worst, float((piece - alone).abs().max()))
                scale = max(scale, float(alone.abs().max()))
                start += len(seq)
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    return ProbeResult(mode=mode, max_abs_diff=worst, tolerance=probe_tolerance(dtype, scale))


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if hasattr(value, "to") else value


def _partitioned(model: PreTrainedModel) -> bool:
    """True under ZeRO-3, whose ranks hold only shards of the weights before training."""
    return any(hasattr(param, "ds_numel") for param in model.parameters())


def configure_model_for_packing(
    model: PreTrainedModel,
    *,
    requested: bool,
    pad_token_id: int,
    device: str | None = None,
    row_length: int | None = None,
) -> PackingDecision:
    """Decide the run's packing mode, turn the KV cache off, and probe the model for leaks.

    ``device`` is where the run trains: the kernels are those of that device, and the probe
    runs there (the model is moved there first, as the Trainer would), on rows as wide as
    training pads them (``row_length``), with the model's attention implementation. The KV
    cache must be off in training because transformers only looks for packed sequences when there is
    no cache. A probe that finds packed logits differ from separate ones turns packing
    off; so does ZeRO-3 for linear-attention layers, where the probe can't run on
    partitioned weights and the rules alone are not trusted.
    """
    model.config.use_cache = False
    current = next(model.parameters()).device
    if device is not None and not _partitioned(model) and current.type != device.split(":")[0]:
        model.to(device)
        current = next(model.parameters()).device
    decision = decide_packing(
        model.config,
        requested=requested,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        linear_kernel_problem=linear_kernel_problem_here(cuda=current.type == "cuda"),
    )
    if not decision.packed:
        return decision
    if _partitioned(model):
        if decision.mode == "flattened_varlen":
            return PackingDecision(
                "off",
                f"{decision.reason}, but ZeRO-3 partitions the weights before the start-up "
                "probe could check it",
            )
        return replace(decision, reason=f"{decision.reason}; start-up probe skipped (ZeRO-3)")
    if _prequantized(model):
        if decision.mode == "flattened_varlen":
            return PackingDecision("off", f"{decision.reason}, but the probe can't run here")
        # An inference forward makes GPTQ / AWQ kernels repack their weights for inference.
        return replace(
            decision, reason=f"{decision.reason}; start-up probe skipped (GPTQ / AWQ kernels)"
        )
    result = probe_packing(model, decision.mode, pad_token_id=pad_token_id, row_length=row_length)
    if not result.exact:
        log.warning("start-up probe: %s; training without packing", result.describe())
        return PackingDecision(
            "off",
            f"start-up probe: {result.describe()}, so packed samples would leak into each other",
        )
    return replace(
        decision,
        reason=f"{decision.reason}; start-up probe: packed = separate logits within "
        f"{result.tolerance:.1g} (max diff {result.max_abs_diff:.1g})",
    )


def _prequantized(model: PreTrainedModel) -> bool:
    quantization = getattr(model.config, "quantization_config", None)
    method = getattr(quantization, "quant_method", None)
    if isinstance(quantization, dict):
        method = quantization.get("quant_method")
    return str(getattr(method, "value", method)).lower() in ("gptq", "awq")


def decision_from_text(mode: str, reason: str) -> PackingDecision:
    """A decision sent between ranks as text, checked against the known modes."""
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown packing mode {mode!r}; expected one of {PACKING_MODES}")
    return PackingDecision(mode, reason)
