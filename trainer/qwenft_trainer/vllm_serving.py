"""How vLLM should serve a trained adapter: as a LoRA over the base, or merged first.

vLLM loads PEFT LoRA adapters next to the base model (``--enable-lora``), which keeps one
base in GPU memory for many fine-tunes, but it accepts only plain LoRA adapters: a rank no
larger than ``--max-lora-rank`` (itself one of a fixed set of values), no
``modules_to_save``, no DoRA, no AdaLoRA (``lora.adaptive``), no bias terms, no LoRA on
embeddings or the output head, no inits that rewrite the base weights. Anything else has to
be merged into the base first and served as an ordinary model.

:func:`decide_vllm` is the one decision, over an adapter's PEFT config: the operator calls it
with the config its spec will make the trainer write (before training, to plan the merge Job
and the Deployment), and :func:`read_vllm_decision` with the ``adapter_config.json`` on disk.
:func:`lora_args` writes vLLM's LoRA flags for every server that serves adapters. This module
imports no torch (the operator image has none).

    python -m qwenft_trainer.vllm_serving /runs/demo/adapter --served-model-name demo

It is over 300 lines because every reason vLLM can't serve an adapter as a LoRA is written
out with its source in vLLM, beside the one decision that uses them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The --max-lora-rank values vLLM 0.11.0, the chart's vLLM, accepts (LoRAConfig.__post_init__
# in vllm/config/lora.py refuses any other at start-up; later releases also take 1).
# tests/operator/test_vllm_args_accepted.py compares this with vLLM's own LoRAConfig.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

# Modules vLLM applies LoRA to in Qwen2 (packed there as qkv_proj and gate_up_proj).
VLLM_QWEN2_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
# ... and the Gated DeltaNet projections of Qwen3-Next and Qwen3.5, which vLLM lists in
# packed_modules_mapping (vllm/model_executor/models/qwen3_next.py: in_proj_qkvz and
# in_proj_ba as themselves; qwen3_5.py with LoRA on: in_proj_qkv, in_proj_z, in_proj_ba
# packed from in_proj_b + in_proj_a), plus out_proj, a plain row-parallel linear.
VLLM_QWEN_LORA_MODULES = VLLM_QWEN2_LORA_MODULES | frozenset(
    {"in_proj_qkvz", "in_proj_ba", "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj"}
)
# model_types whose fused-expert LoRA (peft target_parameters: 3-D ``experts.gate_up_proj`` /
# ``experts.down_proj`` pairs) vLLM serves over the base. None, as of vLLM's main branch:
# - Qwen3MoeForCausalLM and Qwen3NextForCausalLM keep SupportsLoRA's default
#   ``is_3d_moe_weight = False``, so their FusedMoE LoRA (vllm/lora/layers/fused_moe.py,
#   FusedMoEWithLoRA) loads only per-expert 2-D keys (``experts.{e}.gate_proj.lora_A``);
# - Qwen3_5MoeForConditionalGeneration sets ``is_3d_moe_weight = True`` (FusedMoE3DWithLoRA),
#   but PEFT target_parameters adapters are refused or silently dropped there
#   (vllm-project/vllm issue #40005 open; fix PR #41384 closed unmerged).
# An adapter with expert tensors is therefore merged before vLLM serves it.
VLLM_EXPERT_LORA_MODEL_TYPES: frozenset[str] = frozenset()

# PEFT inits that only set the adapter's starting weights; the saved adapter is plain LoRA.
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})

# An adaptive-rank adapter (lora.adaptive) computes B·diag(E)·A scaled by its starting rank,
# with a different kept rank per matrix; vLLM's LoRA loader reads only plain lora_A/lora_B.
ADALORA_REASON = (
    "peft_type is ADALORA (lora.adaptive): an adaptive-rank adapter holds B·diag(E)·A with "
    "a different rank per matrix, which vLLM's LoRA loader doesn't read; merge it first, "
    "or serve it with the builtin engine (peft loads it)"
)

ServeMode = Literal["lora", "merged"]


class AdapterConfigError(ValueError):
    """The adapter directory has no readable ``adapter_config.json``."""


@dataclass(frozen=True)
class VllmDecision:
    """How to start vLLM for one adapter.

    ``mode`` is ``"lora"`` when vLLM can serve the adapter over the base, ``"merged"`` when
    the adapter must be merged first; ``reasons`` says why in the second case.
    """

    mode: ServeMode
    served_model_name: str
    adapter_path: str
    adapter_rank: int
    max_lora_rank: int | None
    base_model: str | None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def requires_merge(self) -> bool:
        return self.mode == "merged"

    def vllm_args(self, *, model: str | None = None) -> list[str]:
        """Arguments for ``vllm serve`` (``python -m vllm.entrypoints.openai.api_server``).

        ``model`` is what vLLM loads: the base for ``lora`` mode (defaults to the base the
        adapter names), the merged model's directory for ``merged`` mode (required then).
        """
        if self.mode == "merged":
            if model is None:
                raise ValueError("a merged deployment needs model= (the merged model directory)")
            return ["--model", model, "--served-model-name", self.served_model_name]
        base = model or self.base_model
        if base is None:
            raise ValueError(
                "the adapter's config names no base model: pass model= (the base directory)"
            )
        assert self.max_lora_rank is not None
        modules = {self.served_model_name: self.adapter_path}
        return ["--model", base, *lora_args(modules, max_lora_rank=self.max_lora_rank)]


def lora_args(
    modules: Mapping[str, str],
    *,
    max_lora_rank: int,
    max_loras: int | None = None,
    max_cpu_loras: int | None = None,
) -> list[str]:
    """vLLM's flags for serving ``modules`` (served name -> adapter path) over one base.

    ``max_loras`` (adapters in one batch) defaults to all of them; ``--max-cpu-loras`` is
    given only when set. ``max_lora_rank`` must be one vLLM accepts (:func:`round_up_lora_rank`).
    """
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        raise ValueError(f"--max-lora-rank {max_lora_rank} is not one of {VLLM_MAX_LORA_RANKS}")
    args = [
        "--enable-lora",
        "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(max_loras or len(modules)),
    ]  # fmt: skip
    if max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(max_cpu_loras)]
    return [*args, "--lora-modules", *(f"{name}={path}" for name, path in modules.items())]


def round_up_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits ``rank``; None if none does."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT adapter directory, with errors that name the file."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise AdapterConfigError(
            f"{path} not found: {adapter_dir} is not a PEFT adapter directory "
            "(expected adapter_config.json and adapter_model.safetensors)"
        ) from err
    except OSError as err:
        raise AdapterConfigError(f"can't read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise AdapterConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise AdapterConfigError(f"{path} must hold a JSON object")
    return raw


def unsupported_features(config: dict[str, Any], *, model_type: str | None = None) -> list[str]:
    """Reasons vLLM can't load this adapter as a LoRA, from its PEFT config (empty if none).

    ``model_type`` is the base's (``config.json``), when known: it decides whether expert
    tensors can be served unmerged.
    """
    reasons: list[str] = []
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type == "ADALORA":
        reasons.append(ADALORA_REASON)
    elif peft_type != "LORA":
        reasons.append(f"peft_type is {peft_type}; vLLM serves only LoRA adapters")
    if config.get("modules_to_save"):
        reasons.append(
            f"modules_to_save {config['modules_to_save']} are trained in full; vLLM loads "
            "only the low-rank matrices of an adapter"
        )
    if config.get("use_dora"):
        reasons.append("DoRA adapters (use_dora) are not supported by vLLM")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        reasons.append("adapters with bias terms (bias / lora_bias) are not supported by vLLM")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        reasons.append(
            f"init_lora_weights={init!r} rewrites the base weights when the adapter loads; "
            "vLLM would serve the unmodified base"
        )
    for key in ("layer_replication", "alora_invocation_tokens", "trainable_token_indices"):
        if config.get(key):
            reasons.append(f"{key} is set; vLLM does not support it")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        outside = sorted(set(targets) - VLLM_QWEN_LORA_MODULES)
        if outside:
            reasons.append(
                f"target_modules {outside} are outside the attention, MLP and linear-attention "
                "projections vLLM applies LoRA to"
            )
    tensors = config.get("target_parameters")
    if tensors and str(model_type) not in VLLM_EXPERT_LORA_MODEL_TYPES:
        reasons.append(
            f"target_parameters {list(tensors)} adapt fused MoE expert tensors; vLLM serves "
            f"no such LoRA for {model_type or 'this model'} (see VLLM_EXPERT_LORA_MODEL_TYPES)"
        )
    return reasons


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank in the adapter: ``r`` or any per-module ``rank_pattern`` override.

    An AdaLoRA adapter's ``rank_pattern`` holds a keep-mask per matrix; without one (saved
    before any pruning) every matrix has its starting rank ``init_r``.
    """
    pattern = config.get("rank_pattern") or {}
    if str(config.get("peft_type", "LORA")).upper() == "ADALORA":
        if pattern:
            return max(1, *(sum(bool(v) for v in mask) for mask in pattern.values()))
        return int(config.get("init_r", 12))
    ranks = [int(config.get("r", 8)), *(int(r) for r in pattern.values())]
    return max(ranks)


def decide_vllm(
    config: Mapping[str, Any],
    *,
    served_model_name: str,
    adapter_path: str,
    base_model: str | None,
    model_type: str | None = None,
    more_reasons: Sequence[str] = (),
) -> VllmDecision:
    """How vLLM serves the adapter whose PEFT config is ``config``: as a LoRA, or merged.

    ``adapter_path`` is where the vLLM server sees the adapter; ``model_type`` is the base's,
    when known; ``more_reasons`` are the caller's own reasons to merge (what it can't know).
    """
    if not served_model_name:
        raise ValueError("served_model_name must not be empty")
    rank = adapter_rank(dict(config))
    reasons = [*unsupported_features(dict(config), model_type=model_type), *more_reasons]
    max_rank = round_up_lora_rank(rank)
    if max_rank is None:
        reasons.append(
            f"LoRA rank {rank} is above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}"
        )
    return VllmDecision(
        mode="merged" if reasons else "lora",
        served_model_name=served_model_name,
        adapter_path=adapter_path,
        adapter_rank=rank,
        max_lora_rank=None if reasons else max_rank,
        base_model=base_model,
        reasons=tuple(reasons),
    )


def read_vllm_decision(
    adapter_dir: str | Path,
    *,
    served_model_name: str,
    adapter_path: str | None = None,
    base_model: str | None = None,
) -> VllmDecision:
    """:func:`decide_vllm` for the adapter saved in ``adapter_dir``.

    ``adapter_path`` is where the vLLM server will see the adapter (the mount path in its
    pod; defaults to ``adapter_dir``); ``base_model`` overrides the base the adapter names.
    """
    config = read_adapter_config(adapter_dir)
    base = base_model or config.get("base_model_name_or_path") or None
    return decide_vllm(
        config,
        served_model_name=served_model_name,
        adapter_path=adapter_path or str(adapter_dir),
        base_model=base,
        model_type=local_model_type(base),
    )


def local_model_type(base: str | None) -> str | None:
    """``model_type`` of a base checkpoint directory (``*_text`` folded into its parent);
    None for a hub id or an unreadable config."""
    if not base:
        return None
    try:
        raw = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    return str(model_type).removesuffix("_text") if model_type else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", type=Path, help="PEFT adapter directory")
    parser.add_argument("--served-model-name", required=True, help="name clients request")
    parser.add_argument("--adapter-path", help="the adapter's path as the vLLM server sees it")
    parser.add_argument("--base-model", help="base model to serve (default: the adapter's)")
    args = parser.parse_args(argv)
    try:
        decision = read_vllm_decision(
            args.adapter_dir,
            served_model_name=args.served_model_name,
            adapter_path=args.adapter_path,
            base_model=args.base_model,
        )
    except AdapterConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if decision.requires_merge:
        print("merge first, then serve the merged model:")
        for reason in decision.reasons:
            print(f"  - {reason}")
    else:
        print("vllm serve " + " ".join(decision.vllm_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
