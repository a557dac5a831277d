"""Loading the base model and tokenizer, and preparing them for LoRA, Q-LoRA or full training.

The three methods differ only in how the model is loaded and wrapped: LoRA freezes the
base and adds low-rank adapters (peft); Q-LoRA also loads the frozen base in 4 bits
(bitsandbytes) and readies it with ``prepare_model_for_kbit_training``; a full fine-tune
trains every weight. Everything else in the recipe is the same, so this module is the one
place that knows the difference. The attention kernel the model loads with is
:mod:`qwenft_trainer.attention`'s choice (:func:`choose_attention`). The hub token comes
from the environment variable the config names and is passed to ``from_pretrained``
only, never logged.

    tokenizer = load_tokenizer(config.model)
    attention = choose_attention(config, cuda=torch.cuda.is_available())
    model = prepare_model(load_model(config, attention=attention), config)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qwenft_trainer import architectures
from qwenft_trainer.architectures import Architecture
from qwenft_trainer.attention import (
    AttentionChoice,
    decide_attention,
    kernel_problems_here,
    supported_implementations,
)
from qwenft_trainer.base_checks import config_kwargs, read_base_config, source_kwargs
from qwenft_trainer.config import (
    DTYPE_NAMES,
    ModelSource,
    Precision,
    QuantizationSettings,
    TrainConfig,
)
from qwenft_trainer.quantized import (
    CheckpointQuantization,
    build_checkpoint_loading_config,
    method_problems,
)
from qwenft_trainer.router_loss import keep_router_aux_loss

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, DTYPE_NAMES[precision])
    return dtype


def build_quantization_config(
    settings: QuantizationSettings, arch: Architecture | None = None
) -> BitsAndBytesConfig:
    """bitsandbytes 4-bit settings of the frozen base (Q-LoRA); a vision tower stays as is."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(settings.compute_dtype),
        llm_int8_skip_modules=arch.quantization_skip_modules if arch else None,
    )


def build_lora_config(config: TrainConfig, model: PreTrainedModel) -> LoraConfig:
    """The peft adapter the run trains on ``model`` (targets: :mod:`qwenft_trainer.targets`):
    a LoRA of rank ``lora.r``, or with ``lora.adaptive`` an AdaLoRA (a ``LoraConfig``
    subclass) starting at that rank.

    Raises :class:`~qwenft_trainer.targets.TargetError` when a target matches nothing.
    """
    from peft import LoraConfig, TaskType

    from qwenft_trainer.targets import resolve_targets

    lora = config.lora
    targets = resolve_targets(model, lora)
    shared: dict[str, Any] = {
        "lora_dropout": targets.dropout,
        "target_modules": list(targets.target_modules),
        "modules_to_save": list(targets.modules_to_save) or None,
        "bias": "none",
        "task_type": TaskType.CAUSAL_LM,
    }
    if lora.adaptive is not None:
        from qwenft_trainer.adaptive_rank import build_adalora_config

        return build_adalora_config(config, lora.adaptive, **shared)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        target_parameters=list(targets.target_parameters) or None,
        **shared,
    )


def build_load_kwargs(
    config: TrainConfig,
    *,
    device: str | None,
    prequantized: CheckpointQuantization | None = None,
    arch: Architecture | None = None,
    attn_implementation: str = "sdpa",
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the method and precision.

    LoRA and Q-LoRA load the frozen base in the training precision (half the memory of
    fp32); a full fine-tune loads fp32 master weights and trains under autocast (DeepSpeed
    casts to its own precision itself). A 4-bit base is quantized while loading, on the
    device of this rank, so ``device`` is required for Q-LoRA. ``prequantized`` is what
    the checkpoint's own ``config.json`` declares (GPTQ, AWQ): Q-LoRA then loads those
    weights with kernels that support training instead of quantizing with bitsandbytes.
    """
    problems = method_problems(
        prequantized,
        name=config.model.name_or_path,
        method=config.method,
        quantization=config.quantization,
    )
    if problems:
        raise ValueError("; ".join(problems))
    kwargs = source_kwargs(config.model)
    kwargs["attn_implementation"] = attn_implementation
    if config.method == "full":
        kwargs["dtype"] = torch_dtype("fp32")
    else:
        kwargs["dtype"] = torch_dtype(config.training.precision)
    if config.method == "qlora":
        assert config.quantization is not None  # set by TrainConfig's validator
        if prequantized is not None:
            kwargs["quantization_config"] = build_checkpoint_loading_config(prequantized)
        else:
            kwargs["quantization_config"] = build_quantization_config(config.quantization, arch)
        kwargs["dtype"] = torch_dtype(config.quantization.compute_dtype)
        if device is None:
            raise ValueError("method 'qlora' loads the quantized base onto a device; pass device")
        kwargs["device_map"] = {"": device}
    return kwargs


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    """The fast tokenizer of the model, with a pad token (Qwen pads with ``<|endoftext|>``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.name_or_path, use_fast=True, **source_kwargs(source)
    )
    if tokenizer.pad_token_id is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    return tokenizer


def attention_precision(config: TrainConfig) -> Precision:
    """The precision attention computes in: Q-LoRA's compute dtype, else training.precision.

    A full fine-tune keeps fp32 master weights but computes under autocast.
    """
    if config.method == "qlora" and config.quantization is not None:
        return config.quantization.compute_dtype
    return config.training.precision


def choose_attention(config: TrainConfig, *, cuda: bool) -> AttentionChoice:
    """The attention implementation this run loads the model with (:mod:`.attention`).

    Raises :class:`~qwenft_trainer.attention.AttentionError` when ``training.attention``
    names a kernel that can't run here.
    """
    from transformers import AutoConfig

    source = config.model
    model_config = AutoConfig.from_pretrained(source.name_or_path, **source_kwargs(source))
    return decide_attention(
        requested=config.training.attention,
        cuda=cuda,
        precision=attention_precision(config),
        supported=supported_implementations(architectures.concrete_model_class(model_config)),
        problems=kernel_problems_here(cuda=cuda),
    )


def load_model(
    config: TrainConfig, *, device: str | None = None, attention: AttentionChoice | None = None
) -> PreTrainedModel:
    """The whole base checkpoint as the method needs it (4-bit for Q-LoRA).

    ``attention`` is :func:`choose_attention`'s choice; without one the model loads with
    sdpa, the CPU path.

    A multimodal checkpoint (Qwen3.5) loads with its vision tower, so what is saved or
    merged later is still that checkpoint; :mod:`qwenft_trainer.architectures` decides.
    A GPTQ / AWQ checkpoint loads with its own quantization (:mod:`qwenft_trainer.quantized`).
    """
    from qwenft_trainer.quantized import checkpoint_quantization

    source = config.model
    base_config = read_base_config(source.name_or_path, **config_kwargs(source))
    prequantized = checkpoint_quantization(base_config)
    arch = architectures.read_architecture(source.name_or_path, **source_kwargs(source))
    implementation = attention.implementation if attention is not None else "sdpa"
    kwargs = build_load_kwargs(
        config,
        device=device,
        prequantized=prequantized,
        arch=arch,
        attn_implementation=implementation,
    )
    shown = {k: v for k, v in kwargs.items() if k != "token"}
    log.info("loading %s as %s (%s)", source.name_or_path, arch.auto_class, shown)
    model: PreTrainedModel = architectures.model_class(arch).from_pretrained(
        source.name_or_path, **kwargs
    )
    return model


def prepare_model(model: PreTrainedModel, config: TrainConfig) -> PreTrainedModel:
    """Wrap the model for the method: peft adapters (LoRA / Q-LoRA) or all weights trainable."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model.config.use_cache = False
    keep_router_aux_loss(model)
    checkpointing = config.training.gradient_checkpointing
    arch = architectures.describe(model.config.to_dict())
    if config.method == "full":
        model.requires_grad_(True)
        frozen = architectures.freeze_towers(model, arch)
        if frozen:
            log.info("vision tower frozen: %d parameters keep their base values", frozen)
        return model
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora_config = build_lora_config(config, model)
    if arch.lora_exclude_pattern:
        lora_config.exclude_modules = arch.lora_exclude_pattern
    peft_model: PreTrainedModel = get_peft_model(model, lora_config)
    architectures.check_towers_frozen(peft_model, arch)
    return peft_model


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its unpacked size.

    Under ZeRO-3 each rank holds a shard; ``ds_numel`` is the full size of the parameter.
    """
    trainable = total = 0
    for param in model.parameters():
        count = int(getattr(param, "ds_numel", param.numel()))
        if hasattr(param, "quant_state"):
            count *= 2
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total
