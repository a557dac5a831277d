"""LoRA targets per architecture (qwenft_trainer.targets), on every tiny architecture.

Covers: each architecture's default targets match its tiny model, with no name left
unmatched, and peft adapts exactly those (experts through target_parameters on the MoE
generations, Gated DeltaNet projections on Qwen3-Next and Qwen3.5, never the conv1d, the
router or the vision tower); a name that matches nothing is an error naming what the model
has; train_router on a dense model, and an explicit dropout with expert tensors, are
errors; every default module is one vLLM applies LoRA to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer import vllm_serving
from qwenft_trainer.config import LoraSettings, TrainConfig
from qwenft_trainer.modeling import build_lora_config
from qwenft_trainer.targets import ARCH_TARGETS, TargetError, arch_of, resolve_targets
from qwenft_trainer.tiny import TINY_ARCHS

MOE_ARCHS = ("qwen3_moe", "qwen3_next", "qwen3_5_moe")
EXPERT_NAMES = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
RETARGETED = ("gate_proj", "up_proj", "down_proj")
LINEAR_ATTENTION = {
    "qwen3_next": {"in_proj_qkvz", "out_proj"},
    "qwen3_5": {"in_proj_qkv", "in_proj_z", "out_proj"},
    "qwen3_5_moe": {"in_proj_qkv", "in_proj_z", "out_proj"},
}


def _load(path: Path, *, multimodal: bool = False) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    return cls.from_pretrained(str(path))


def _config(path: Path, **lora: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(path)},
            "data": {"path": "/unused.jsonl"},
            "output_dir": "/unused",
            "lora": {"r": 4, "alpha": 8, **lora},
        }
    )


def _adapted(peft_model: Any) -> tuple[set[str], set[str]]:
    """(paths of modules given LoRA matrices, paths of tensors given a ParamWrapper)."""
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    modules, tensors = set(), set()
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, ParamWrapper):
            holder = name.replace(".base_layer", "")
            tensors.add(f"{holder}.{module.parameter_name}")
        elif isinstance(module, LoraLayer):
            modules.add(name)
    return modules, tensors


@pytest.mark.parametrize(
    ("arch", "multimodal"),
    [(arch, False) for arch in TINY_ARCHS] + [("qwen3_5", True), ("qwen3_5_moe", True)],
)
def test_default_targets_match_each_architecture_exactly(
    tiny_arch_dir: Callable[[str], Path], arch: str, multimodal: bool
) -> None:
    from peft import get_peft_model

    model = _load(tiny_arch_dir(arch), multimodal=multimodal)
    assert arch_of(model) == arch
    defaults = ARCH_TARGETS[arch]
    resolved = resolve_targets(model, LoraSettings())  # raises on any unmatched default
    # peft would retarget the shared expert's names to the experts: they go as tensors
    as_tensors = RETARGETED if arch == "qwen3_next" else ()
    assert resolved.target_modules == tuple(m for m in defaults.modules if m not in as_tensors)
    assert resolved.target_parameters == defaults.parameters + tuple(
        f"{m}.weight" for m in as_tensors
    )
    assert resolved.dropout == (0.0 if arch in MOE_ARCHS else 0.05)

    peft_model = get_peft_model(model, build_lora_config(_config(tiny_arch_dir(arch)), model))
    modules, tensors = _adapted(peft_model)
    # every default name adapted somewhere, and nothing but default names adapted
    assert {m.rsplit(".", 1)[-1] for m in modules} == set(resolved.target_modules)
    shared = {t for t in tensors if ".shared_expert." in t}
    tensors -= shared
    if arch == "qwen3_next":
        assert {t.rsplit(".", 2)[-2] for t in shared} == set(RETARGETED)
        assert len(shared) == len(RETARGETED) * model.config.num_hidden_layers
    elif arch == "qwen3_5_moe":
        assert {m.rsplit(".", 2)[-2] for m in modules if ".shared_expert." in m} == {
            "shared_expert"
        }
    assert not any("visual" in m for m in modules), "the vision tower stays frozen"
    assert not any(m.endswith(("conv1d", "in_proj_a", "in_proj_b", "in_proj_ba")) for m in modules)
    assert not any(m.endswith(("mlp.gate", "shared_expert_gate")) for m in modules)
    layers = model.config.get_text_config().num_hidden_layers
    if arch in MOE_ARCHS:
        assert len(tensors) == 2 * layers
        assert {t.split(".layers.")[1].split(".", 1)[1] for t in tensors} == set(EXPERT_NAMES)
    else:
        assert tensors == set()
    for name in LINEAR_ATTENTION.get(arch, ()):
        assert any(m.endswith(f"linear_attn.{name}") for m in modules), name


def test_a_target_that_matches_nothing_names_what_the_model_has(
    tiny_arch_dir: Callable[[str], Path],
) -> None:
    model = _load(tiny_arch_dir("qwen3_moe"))
    lora = LoraSettings(target_modules=["q_proj", "gate_projj"], target_parameters=["experts.w1"])
    with pytest.raises(TargetError) as caught:
        resolve_targets(model, lora)
    message = str(caught.value)
    assert "this Qwen3MoeForCausalLM" in message
    assert "lora.target_modules: 'gate_projj' matches no module" in message
    assert "lora.target_parameters: 'experts.w1' matches no parameter" in message
    assert "'q_proj'" not in message  # it matched
    assert "Its linear modules are: q_proj, k_proj, v_proj, o_proj, lm_head;" in message
    assert "expert parameters: mlp.experts.gate_up_proj, mlp.experts.down_proj" in message
    assert "mlp.gate.weight" in message  # the router, as a tensor one could name


def test_the_build_fails_before_peft_sees_a_bad_name(tiny_arch_dir: Callable[[str], Path]) -> None:
    path = tiny_arch_dir("qwen2")
    model = _load(path)
    with pytest.raises(
        TargetError, match=re.escape("lora.target_modules: 'qproj' matches no module")
    ):
        build_lora_config(_config(path, target_modules=["qproj"]), model)
    with pytest.raises(
        TargetError, match=re.escape("lora.modules_to_save: 'lm_haed' matches no module")
    ):
        build_lora_config(_config(path, modules_to_save=["lm_haed"]), model)


def test_train_router_needs_a_router(tiny_arch_dir: Callable[[str], Path]) -> None:
    dense = _load(tiny_arch_dir("qwen3"))
    with pytest.raises(
        TargetError, match=re.escape("lora.train_router: a qwen3 model has no MoE router")
    ):
        resolve_targets(dense, LoraSettings(train_router=True))
    moe = resolve_targets(_load(tiny_arch_dir("qwen3_next")), LoraSettings(train_router=True))
    assert moe.modules_to_save == ("mlp.gate", "mlp.shared_expert_gate")


def test_explicit_dropout_and_expert_tensors_do_not_mix(
    tiny_arch_dir: Callable[[str], Path],
) -> None:
    model = _load(tiny_arch_dir("qwen3_moe"))
    with pytest.raises(TargetError, match=r"lora.dropout 0.1 can't apply.*lora.dropout: 0\b"):
        resolve_targets(model, LoraSettings(dropout=0.1))
    # attention-only on a MoE model keeps the dropout it asks for
    kept = resolve_targets(model, LoraSettings(dropout=0.1, target_parameters=[]))
    assert (kept.dropout, kept.target_parameters) == (0.1, ())


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_default_modules_are_ones_vllm_applies_lora_to(arch: str) -> None:
    assert set(ARCH_TARGETS[arch].modules) <= vllm_serving.VLLM_QWEN_LORA_MODULES


def test_qwen3_next_shared_expert_tensors_also_refuse_dropout(
    tiny_arch_dir: Callable[[str], Path],
) -> None:
    model = _load(tiny_arch_dir("qwen3_next"))
    with pytest.raises(
        TargetError, match=r"target_modules \['gate_proj', 'up_proj', 'down_proj'\]"
    ):
        resolve_targets(model, LoraSettings(dropout=0.1, target_parameters=[]))
    kept = resolve_targets(model, LoraSettings(target_parameters=[]))
    assert kept.target_parameters == ("gate_proj.weight", "up_proj.weight", "down_proj.weight")
    assert kept.dropout == 0.0
