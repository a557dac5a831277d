"""Which weights a LoRA adapter trains on each Qwen architecture, checked against the model.

The Qwen generations name their projections differently, and the mixture-of-experts ones
keep their experts in fused 3-D tensors (``mlp.experts.gate_up_proj`` / ``down_proj``)
instead of ``nn.Linear`` modules, which peft reaches only through ``target_parameters``.
A fixed list of Qwen2 names therefore adapts attention only on Qwen3-MoE and misses the
Gated DeltaNet projections of Qwen3-Next and Qwen3.5, silently. This module holds the
per-architecture defaults and resolves the config against the loaded model, so a name that
matches nothing stops the run before training, naming what the model has instead.

Defaults, per ``config.model_type`` (``*_text`` variants share their parent's):

| arch | target_modules | target_parameters |
| --- | --- | --- |
| qwen2, qwen3 | attention q/k/v/o, MLP gate/up/down | none |
| qwen3_moe | attention q/k/v/o | experts gate_up_proj, down_proj |
| qwen3_next | attention, in_proj_qkvz, out_proj, shared expert gate/up/down (*) | experts |
| qwen3_5 | attention, in_proj_qkv, in_proj_z, out_proj, MLP gate/up/down | none |
| qwen3_5_moe | attention, in_proj_qkv, in_proj_z, out_proj, shared expert | experts |

(*) adapted as tensors (``gate_proj.weight`` ...), since peft retargets those module names to
the experts on Qwen3-MoE and Qwen3-Next (see ``PEFT_RETARGETED_MODEL_TYPES``).

Not adapted by default: the router (``mlp.gate``) and the shared-expert gate, which
``lora.train_router`` trains in full instead (a 1- or ``num_experts``-wide projection is
too small for a low-rank update); the Gated DeltaNet's depthwise ``conv1d``; and its
per-head decay/beta projections (``in_proj_a`` / ``in_proj_b``, ``in_proj_ba``), whose
``num_heads`` outputs are fewer than a usual LoRA rank, so a rank-64 adapter would hold
more numbers than the weight it adapts. Name them in ``lora.target_modules`` to train them.

    resolved = resolve_targets(model, config.lora)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwenft_trainer.config import LoraSettings

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# Dense MLP projections; on the MoE generations these names match the shared expert's.
MLP = ("gate_proj", "up_proj", "down_proj")
# Gated DeltaNet (linear attention) input and output projections.
QWEN3_NEXT_LINEAR_ATTENTION = ("in_proj_qkvz", "out_proj")
QWEN3_5_LINEAR_ATTENTION = ("in_proj_qkv", "in_proj_z", "out_proj")
# Fused expert tensors of every Qwen MoE block in transformers 5.
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
ROUTER = "mlp.gate"
SHARED_EXPERT_GATE = "mlp.shared_expert_gate"
# peft's default dropout for linear modules when the config leaves lora.dropout unset.
DEFAULT_DROPOUT = 0.05
# On these model types peft reads target_modules entries ending in these names as the
# transformers-4 per-expert linears and retargets them to the fused expert tensors
# (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe), so a shared
# expert's gate_proj/up_proj/down_proj can't be reached as a module there; its weight is
# adapted as a tensor instead (target_parameters ``<name>.weight``: the same low-rank update).
PEFT_RETARGETED_MODEL_TYPES = frozenset({"qwen3_moe", "qwen3_next"})
PEFT_RETARGETED_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "gate"})


@dataclass(frozen=True)
class ArchTargets:
    """What an architecture adapts by default, and which modules form its router."""

    modules: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    routers: tuple[str, ...] = ()


ARCH_TARGETS: dict[str, ArchTargets] = {
    "qwen2": ArchTargets(ATTENTION + MLP),
    "qwen3": ArchTargets(ATTENTION + MLP),
    "qwen3_moe": ArchTargets(ATTENTION, EXPERTS, (ROUTER,)),
    "qwen3_next": ArchTargets(
        ATTENTION + QWEN3_NEXT_LINEAR_ATTENTION + MLP, EXPERTS, (ROUTER, SHARED_EXPERT_GATE)
    ),
    "qwen3_5": ArchTargets(ATTENTION + QWEN3_5_LINEAR_ATTENTION + MLP),
    "qwen3_5_moe": ArchTargets(
        ATTENTION + QWEN3_5_LINEAR_ATTENTION + MLP, EXPERTS, (ROUTER, SHARED_EXPERT_GATE)
    ),
}
# Architectures without a row fall back to the Qwen2 projections (then checked like any list).
FALLBACK = ARCH_TARGETS["qwen2"]


class TargetError(ValueError):
    """A LoRA target that can't be applied to this model; the message names the fix."""


@dataclass(frozen=True)
class ResolvedTargets:
    """The adapter's targets for one model, every name known to match."""

    arch: str
    target_modules: tuple[str, ...]
    target_parameters: tuple[str, ...]
    modules_to_save: tuple[str, ...]
    dropout: float


def arch_of(model: nn.Module) -> str:
    """The architecture key of a model: its ``model_type`` without the ``_text`` suffix."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    return model_type.removesuffix("_text")


def default_targets(arch: str) -> ArchTargets:
    """The default targets of ``arch`` (the Qwen2 projections for an unknown one)."""
    return ARCH_TARGETS.get(arch, FALLBACK)


def _matches(key: str, name: str) -> bool:
    """peft's rule for a list entry: the whole dotted path, or its tail after a dot."""
    return key == name or key.endswith(f".{name}")


@dataclass(frozen=True)
class Inventory:
    """What a model offers to adapt: module paths by kind, and directly held parameters."""

    class_name: str
    modules: tuple[str, ...]
    linear: tuple[str, ...]
    adaptable: tuple[str, ...]
    parameters: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, model: nn.Module) -> Inventory:
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        lora_layers = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)
        modules, linear, adaptable, params = [], [], [], []
        for name, module in model.named_modules():
            modules.append(name)
            # GPTQ / AWQ kernels (gptqmodel's QuantLinear classes) are linear layers peft
            # adapts without being nn.Linear; they say so by their feature sizes.
            quantized_linear = not isinstance(module, nn.Linear) and all(
                isinstance(getattr(module, a, None), int) for a in ("in_features", "out_features")
            )
            if isinstance(module, lora_layers) or quantized_linear:
                adaptable.append(name)
                if quantized_linear or isinstance(module, nn.Linear | Conv1D):
                    linear.append(name)
                continue
            for param_name, param in module.named_parameters(recurse=False):
                if param.dim() >= 2:
                    params.append((f"{name}.{param_name}" if name else param_name, param.dim()))
        return cls(
            type(model).__name__, tuple(modules), tuple(linear), tuple(adaptable), tuple(params)
        )

    def modules_matching(self, name: str, *, adaptable_only: bool = True) -> list[str]:
        keys = self.adaptable if adaptable_only else self.modules
        return [key for key in keys if _matches(key, name)]

    def parameters_matching(self, name: str) -> list[str]:
        return [key for key, _ in self.parameters if _matches(key, name)]

    def describe(self) -> str:
        """The short names a config can use, for an error message."""
        linear = _short_names(self.linear, last=1)
        experts = _short_names([k for k, dim in self.parameters if dim == 3], last=None)
        others = _short_names([k for k, dim in self.parameters if dim == 2], last=None)
        text = f"its linear modules are: {', '.join(linear) or 'none'}"
        if experts:
            text += f"; its expert parameters: {', '.join(experts)}"
        if others:
            text += f"; its other matrix parameters: {', '.join(others)}"
        return text


_LAYER_INDEX = re.compile(r"^(?:.*\.)?\d+\.")


def _short_names(keys: list[str] | tuple[str, ...], *, last: int | None) -> list[str]:
    """Distinct names as a config writes them: the last ``last`` parts, or what follows
    the innermost layer index (``model.layers.3.mlp.experts.down_proj`` ->
    ``mlp.experts.down_proj``); in order of first appearance."""
    seen: dict[str, None] = {}
    for key in keys:
        short = ".".join(key.split(".")[-last:]) if last else _LAYER_INDEX.sub("", key)
        seen.setdefault(short, None)
    return list(seen)


def resolve_targets(model: nn.Module, lora: LoraSettings) -> ResolvedTargets:
    """The config's targets for ``model``, with architecture defaults filled in.

    Raises :class:`TargetError` when a name matches nothing in the model, when
    ``lora.train_router`` is set on a model without a router, when an explicit dropout
    meets expert parameters (peft's LoRA on a bare tensor takes no dropout), or when
    ``lora.adaptive`` meets them (peft's AdaLoRA adapts modules only).
    """
    arch = arch_of(model)
    defaults = default_targets(arch)
    if arch not in ARCH_TARGETS and (lora.target_modules is None):
        log.warning(
            "no default LoRA targets for model_type %r; using the Qwen2 projections %s",
            arch,
            list(FALLBACK.modules),
        )
    modules = tuple(lora.target_modules) if lora.target_modules is not None else defaults.modules
    parameters = (
        tuple(lora.target_parameters) if lora.target_parameters is not None else defaults.parameters
    )
    inventory = Inventory.of(model)
    origin = "" if lora.target_modules is not None else f" (the {arch or 'fallback'} default)"
    problems = [
        f"lora.target_modules{origin}: {name!r} matches no module"
        for name in modules
        if not inventory.modules_matching(name)
    ]
    origin = "" if lora.target_parameters is not None else f" (the {arch} default)"
    problems += [
        f"lora.target_parameters{origin}: {name!r} matches no parameter"
        for name in parameters
        if not inventory.parameters_matching(name)
    ]
    problems += [
        f"lora.modules_to_save: {name!r} matches no module"
        for name in lora.modules_to_save
        if not inventory.modules_matching(name, adaptable_only=False)
    ]
    routers: tuple[str, ...] = ()
    if lora.train_router:
        routers = tuple(
            name
            for name in defaults.routers
            if inventory.modules_matching(name, adaptable_only=False)
        )
        if not routers:
            problems.append(
                f"lora.train_router: a {arch or 'model'} model has no MoE router "
                f"({ROUTER}); set lora.train_router: false"
            )
    if problems:
        has = inventory.describe()
        raise TargetError(
            f"LoRA targets don't fit this {inventory.class_name}: {'; '.join(problems)}. "
            f"{has[0].upper()}{has[1:]}"
        )
    moved: tuple[str, ...] = ()
    if str(getattr(model.config, "model_type", "")) in PEFT_RETARGETED_MODEL_TYPES:
        moved = tuple(n for n in modules if n.rsplit(".", 1)[-1] in PEFT_RETARGETED_NAMES)
        modules = tuple(n for n in modules if n not in moved)
        parameters += tuple(f"{name}.weight" for name in moved)
    if lora.adaptive is not None and parameters:
        why = f"on {arch}, target_modules {list(moved)} are adapted as tensors; " if moved else ""
        raise TargetError(
            f"lora.adaptive can't adapt the tensors {list(parameters)} ({why}peft's AdaLoRA "
            "adapts linear modules only): set lora.target_parameters: [] "
            + ("and leave those names out of lora.target_modules " if moved else "")
            + "to adapt the other projections, or remove lora.adaptive"
        )
    if lora.dropout is not None:
        dropout = lora.dropout
        if parameters and dropout > 0:
            note = f" (on {arch}, target_modules {list(moved)} are adapted as tensors)"
            raise TargetError(
                f"lora.dropout {dropout:g} can't apply to the tensors {list(parameters)}"
                f"{note if moved else ''}: peft's LoRA on a bare tensor takes no dropout; "
                "set lora.dropout: 0 (or leave it unset)"
                + ("" if moved else ", or lora.target_parameters: []")
            )
    else:
        dropout = 0.0 if parameters else DEFAULT_DROPOUT
    log.info(
        "LoRA on %s: modules %s, tensors %s, trained in full %s, dropout %g",
        arch or inventory.class_name,
        list(modules),
        list(parameters),
        list(lora.modules_to_save) + list(routers),
        dropout,
    )
    return ResolvedTargets(
        arch=arch,
        target_modules=modules,
        target_parameters=parameters,
        modules_to_save=tuple(lora.modules_to_save) + routers,
        dropout=dropout,
    )
