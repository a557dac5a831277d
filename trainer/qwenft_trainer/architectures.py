"""What train, merge and serve need to know about a checkpoint's architecture, from its config.

Qwen3.5 checkpoints are multimodal (``Qwen3_5ForConditionalGeneration``: a vision tower
under ``model.visual`` next to the language model under ``model.language_model``).
``AutoModelForCausalLM`` loads them as the text-only ``Qwen3_5ForCausalLM`` and silently
drops the vision tower, so a fine-tune saved or merged from that model is no longer the
checkpoint it started from. This module is the one place that decides, from
``config.json`` alone, which class loads a checkpoint whole, which modules are the
language model that text fine-tuning trains, and which towers stay frozen and are saved
unchanged. Text-only architectures (Qwen2/2.5, Qwen3, Qwen3-MoE, Qwen3-Next) load with
``AutoModelForCausalLM`` and have nothing frozen.

    arch = describe(model.config.to_dict())
    model = model_class(arch).from_pretrained(path)
    freeze_towers(model, arch)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Module paths in transformers' multimodal Qwen models (Qwen2-VL ... Qwen3.5): the language
# model and the vision tower, as ``named_modules`` and the checkpoint's weight names spell them.
MULTIMODAL_LANGUAGE_MODEL = "model.language_model"
MULTIMODAL_VISION_TOWER = "model.visual"
TEXT_LANGUAGE_MODEL = "model"
OUTPUT_HEAD = "lm_head"
# What PEFT puts in front of the base model's module names.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Architecture:
    """How to load and train one checkpoint; :func:`describe` reads it from a config."""

    model_type: str  # config.json's model_type: "qwen2", "qwen3_5", ...
    class_name: str  # config.json's architectures[0], e.g. "Qwen3_5ForConditionalGeneration"
    multimodal: bool  # has a vision tower (config.json has vision_config)
    language_model: str  # module path of the decoder stack: "model" or "model.language_model"
    frozen_towers: tuple[str, ...]  # module paths never trained and saved unchanged
    linear_attention: bool  # some layers are Gated DeltaNet (Qwen3-Next, Qwen3.5)
    moe: bool  # mixture-of-experts MLP layers

    @property
    def auto_class(self) -> str:
        """The transformers auto class that loads the whole checkpoint."""
        return "AutoModelForImageTextToText" if self.multimodal else "AutoModelForCausalLM"

    @property
    def lora_exclude_pattern(self) -> str | None:
        """A PEFT ``exclude_modules`` regex keeping adapters off the frozen towers."""
        if not self.frozen_towers:
            return None
        towers = "|".join(tower.replace(".", r"\.") for tower in self.frozen_towers)
        return rf"({towers})(\..*)?"

    @property
    def quantization_skip_modules(self) -> list[str] | None:
        """Modules bitsandbytes must leave un-quantized (None: transformers' defaults).

        Naming any replaces transformers' default list, so the output head is named too.
        """
        if not self.frozen_towers:
            return None
        return [*self.frozen_towers, OUTPUT_HEAD]


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's settings: ``text_config`` of a multimodal config, else itself."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def describe(config: Mapping[str, Any]) -> Architecture:
    """The architecture of a checkpoint from its ``config.json`` (or ``config.to_dict()``)."""
    text = text_config(config)
    names = config.get("architectures") or []
    multimodal = isinstance(config.get("vision_config"), Mapping)
    layer_types = text.get("layer_types") or []
    return Architecture(
        model_type=str(config.get("model_type", "")),
        class_name=str(names[0]) if names else "",
        multimodal=multimodal,
        language_model=MULTIMODAL_LANGUAGE_MODEL if multimodal else TEXT_LANGUAGE_MODEL,
        frozen_towers=(MULTIMODAL_VISION_TOWER,) if multimodal else (),
        linear_attention="linear_attention" in layer_types,
        moe=int(text.get("num_experts") or text.get("num_local_experts") or 0) > 0,
    )


def read_architecture(name_or_path: str, **kwargs: Any) -> Architecture:
    """The architecture of a local directory or hub id (``from_pretrained`` keyword args)."""
    from transformers import AutoConfig

    return describe(AutoConfig.from_pretrained(name_or_path, **kwargs).to_dict())


def model_class(arch: Architecture) -> Any:
    """The auto class whose ``from_pretrained`` loads the whole checkpoint."""
    import transformers

    return getattr(transformers, arch.auto_class)


def concrete_model_class(model_config: Any) -> Any | None:
    """The transformers class the auto class picks for a loaded config (None: not built in).

    Its ``_supports_*`` flags say which attention implementations it can run.
    """
    auto = model_class(describe(model_config.to_dict()))
    try:
        return auto._model_mapping[type(model_config)]
    except KeyError:  # remote code: the checkpoint's own class, unknown before loading
        return None


def tower_parameters(model: Any, arch: Architecture) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every frozen tower; ``model`` may be wrapped by PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for tower in arch.frozen_towers:
        yield from base.get_submodule(tower).named_parameters(prefix=tower)


def freeze_towers(model: Any, arch: Architecture) -> int:
    """Stop gradients into the frozen towers; returns how many parameters were frozen."""
    count = 0
    for _, param in tower_parameters(model, arch):
        param.requires_grad_(False)
        count += param.numel()
    return count


def check_towers_frozen(model: Any, arch: Architecture) -> None:
    """Raise naming the first tower parameter that would train (or carries an adapter)."""
    for name, param in tower_parameters(model, arch):
        if param.requires_grad or ".lora_" in name or "modules_to_save" in name:
            raise ValueError(
                f"{name} would be trained, but the {arch.class_name} vision tower stays frozen "
                "in text fine-tuning: remove it from lora.target_modules / lora.modules_to_save"
            )
