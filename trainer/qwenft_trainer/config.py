"""TrainConfig: the one description of a training run, shared by the trainer and the operator.

The operator renders this model to YAML in a ConfigMap; the trainer loads it with
``load_config``. It imports no torch, so the operator image stays small. Combinations
that cannot work are rejected here, before any model loads or any GPU is taken, with a
message that names the fields involved.

    qwenft train --config examples/train-lora.yaml

It is over 300 lines because every field carries the description and bounds that both the
trainer's files and the operator's CRD show.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, model_validator

from qwenft_trainer.rules import TRAINING_RULES, Section, format_errors

log = logging.getLogger(__name__)

Method = Literal["lora", "qlora", "full"]
Precision = Literal["bf16", "fp16", "fp32"]
# Each precision's torch dtype, by its name in torch (and in config.json's torch_dtype).
DTYPE_NAMES: dict[Precision, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
QuantType = Literal["nf4", "fp4"]
DataFormat = Literal["auto", "dialogue_sequence", "conversations", "sharegpt", "messages"]
Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
# What a reply without reasoning teaches on a hybrid-thinking template (qwenft_trainer.thinking).
ThinkingPolicy = Literal["empty-in-prompt", "empty-in-reply"]
# How the loss is computed (qwenft_trainer.kernels): Liger on CUDA, chunked, or plain logits.
Kernels = Literal["auto", "liger", "none"]
DEFAULT_THINKING: ThinkingPolicy = "empty-in-prompt"
# The attention kernel (qwenft_trainer.attention decides what "auto" means for a run).
AttentionSetting = Literal["auto", "sdpa", "flex_attention", "flash_attention_2"]

# Every linear projection of a Qwen2 decoder layer: attention and MLP (other architectures'
# defaults: qwenft_trainer.targets).
QWEN2_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Tuning table (Qwen fine-tuning practice): outside these bounds we warn, we don't refuse.
RECOMMENDED_RANK = (8, 128)
QLORA_MAX_RECOMMENDED_LR = 2e-4


class ModelSource(Section):
    """Where the base model comes from: a local directory, or a hub id at a revision."""

    name_or_path: str = Field(
        description="Local directory of a Hugging Face checkpoint, or a hub id such as "
        "'Qwen/Qwen2.5-7B-Instruct'.",
        min_length=1,
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) to pin the download."
    )
    token_env: str = Field(
        default="HF_TOKEN",
        description="Name of the environment variable holding the hub token. The token itself "
        "never appears in the config, logs or status.",
    )
    trust_remote_code: bool = Field(default=False, description="Allow custom model code.")
    cache_dir: str | None = Field(default=None, description="Shared model cache directory.")

    def token(self) -> SecretStr | None:
        """The hub token from the environment, wrapped so it never prints."""
        value = os.environ.get(self.token_env)
        return SecretStr(value) if value else None


class AdaptiveRankSettings(Section):
    """AdaLoRA (peft ``AdaLoraConfig``): ranks reallocated by importance while training.

    Every adapted matrix starts at rank ``lora.r`` (AdaLoRA's ``init_r``), held as
    P·diag(E)·Q. After ``warmup_steps`` the run prunes the least important singular values
    across all matrices, every ``interval`` steps on a cubic schedule, until the average
    kept rank is ``target_rank``; the last ``final_steps`` train with those ranks fixed.
    Important matrices keep up to ``lora.r``; others drop far below the target. Ranks never
    grow: a schedule that grows a rank (16 -> 32 -> 64) maps onto ``lora.r: 64`` (the
    largest rank any matrix may have) and ``target_rank: 16`` or ``32`` (the budget).
    """

    target_rank: int = Field(
        ge=1,
        le=1024,
        description="Average rank per adapted matrix once pruning ends (AdaLoRA target_r); "
        "below r, the rank every matrix starts with (init_r).",
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Optimizer steps at the full rank r before pruning starts (tinit).",
    )
    final_steps: int = Field(
        default=0,
        ge=0,
        description="Last optimizer steps, trained with the ranks fixed (tfinal); pruning "
        "runs from the end of the warm-up to the run's total steps minus these.",
    )
    interval: int = Field(
        default=1, ge=1, description="Optimizer steps between two rank reallocations (deltaT)."
    )
    beta1: float = Field(
        default=0.85, gt=0.0, lt=1.0, description="EMA factor of the importance (sensitivity)."
    )
    beta2: float = Field(
        default=0.85, gt=0.0, lt=1.0, description="EMA factor of the importance's uncertainty."
    )
    orthogonal_regularization: float = Field(
        default=0.5,
        ge=0.0,
        description="Weight of the loss term keeping P and Q orthogonal (orth_reg_weight).",
    )

    def schedule_problem(self, total_steps: int, *, source: str) -> str | None:
        """Why the schedule doesn't fit ``total_steps`` optimizer steps (None if it does)."""
        pruning = total_steps - self.warmup_steps - self.final_steps
        if pruning < 1:
            return (
                f"lora.adaptive.warmupSteps {self.warmup_steps} + lora.adaptive.finalSteps "
                f"{self.final_steps} leave no pruning steps in the run's {total_steps} "
                f"optimizer steps ({source}): lower them or train longer"
            )
        if self.interval > pruning:
            return (
                f"lora.adaptive.interval {self.interval} is longer than the {pruning} pruning "
                f"steps between warmupSteps and finalSteps ({total_steps} steps, {source}): "
                "the ranks would never be reallocated; lower the interval"
            )
        return None


class LoraSettings(Section):
    r: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="LoRA rank. With adaptive rank: the rank every matrix starts with and "
        "the largest it can keep.",
    )
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator (alpha / r).")
    dropout: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Dropout on LoRA inputs; unset: 0.05, or 0 when expert parameters are "
        "adapted (LoRA on a fused expert tensor takes no dropout).",
    )
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to adapt (a name matches a module whose path ends with "
        "it); unset: the architecture's attention, MLP, shared-expert and linear-attention "
        "projections. A name that matches nothing stops the run before training.",
    )
    target_parameters: list[str] | None = Field(
        default=None,
        description="Parameters adapted as tensors (peft target_parameters), for fused MoE "
        "experts; unset: mlp.experts.gate_up_proj and mlp.experts.down_proj on MoE "
        "architectures, none on dense ones; [] adapts no expert.",
    )
    train_router: bool = Field(
        default=False,
        description="Train the MoE router (mlp.gate, and mlp.shared_expert_gate where there "
        "is one) in full, saved with the adapter; it stays frozen otherwise. The router's "
        "load-balancing loss is on either way.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. 'lm_head', "
        "'embed_tokens' when new tokens are added).",
    )
    adaptive: AdaptiveRankSettings | None = Field(
        default=None,
        description="Adaptive rank (AdaLoRA): start every matrix at rank r and prune by "
        "importance while training to an average of the target rank. The adapter is not "
        "plain LoRA: vLLM serves it merged. Unset: a fixed rank r.",
    )


class QuantizationSettings(Section):
    quant_type: QuantType = Field(
        default="nf4",
        description="4-bit data type (bitsandbytes; a GPTQ / AWQ base keeps its own).",
    )
    double_quant: bool = Field(
        default=True,
        description="Quantize the quantization constants (bitsandbytes; a GPTQ / AWQ base "
        "keeps its own).",
    )
    compute_dtype: Precision = Field(
        default="bf16",
        description="Dtype of the 4-bit matmuls; for a GPTQ / AWQ base, of its kernels (fp16 "
        "is their fastest).",
    )


class TrainingSettings(Section):
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(
        default=-1, ge=-1, description="Optimizer steps to run; overrides epochs when > 0."
    )
    per_device_batch_size: int = Field(default=1, ge=1, description="Sequences per device step.")
    gradient_accumulation_steps: int = Field(default=8, ge=1, description="Steps per update.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0, description="Peak learning rate.")
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Share of steps warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    max_seq_length: int = Field(default=2048, ge=16, le=131072, description="Tokens per sample.")
    precision: Precision = Field(default="bf16", description="Training precision.")
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for memory.")
    seed: int = Field(default=42, ge=0, description="Seed for data order and initialisation.")
    packing: bool = Field(
        default=True,
        description="Pack several samples per sequence (position ids restart per sample, no "
        "attention across samples) instead of padding each one, where the model packs "
        "exactly; otherwise the run trains unpacked and logs why.",
    )
    attention: AttentionSetting = Field(
        default="auto",
        description="Attention kernel: 'auto' takes sdpa on the CPU and, on CUDA, "
        "flex_attention (block-sparse document mask over packed rows) where the model "
        "supports it, else flash_attention_2 where flash-attn is installed, else sdpa; the "
        "choice and its reason are logged and written to summary.json. A kernel named here "
        "that can't run fails the run at start-up.",
    )
    kernels: Kernels = Field(
        default="auto",
        description="How the loss is computed without the full logits tensor: 'auto' uses "
        "Liger Kernel on CUDA for the architectures it patches (fused linear cross-entropy, "
        "RMSNorm, RoPE, SwiGLU) and a chunked cross-entropy over the hidden states elsewhere; "
        "'liger' requires Liger (CUDA, not ZeRO-3); 'none' keeps the model's own loss over "
        "full logits. The log and summary.json say which path ran and why.",
    )
    logging_steps: int = Field(default=1, ge=1, description="Log metrics every N steps.")
    thinking: ThinkingPolicy = Field(
        default=DEFAULT_THINKING,
        description="Replies without reasoning on a hybrid-thinking template (Qwen3, Qwen3.5): "
        "'empty-in-prompt' trains them after the empty <think></think> block that the "
        "enable_thinking=False prompt ends with, so the model keeps its thinking switch; "
        "'empty-in-reply' trains the empty block as part of the reply, so the model learns to "
        "answer without thinking even when thinking is on. Replies with reasoning are always "
        "trained after the enable_thinking=True prompt; templates without thinking ignore this.",
    )


class DeepSpeedSettings(Section):
    enabled: bool = Field(default=False, description="Run under DeepSpeed instead of DDP.")
    zero_stage: Literal[0, 2, 3] = Field(default=2, description="ZeRO stage.")
    offload_optimizer: bool = Field(default=False, description="Optimizer state to CPU.")
    offload_parameters: bool = Field(default=False, description="Parameters to CPU (ZeRO-3).")


class CheckpointSettings(Section):
    save_steps: int = Field(default=100, ge=1, description="Write a checkpoint every N steps.")
    keep: int = Field(default=3, ge=1, description="Checkpoints to keep (oldest removed first).")
    resume: bool = Field(
        default=True, description="Resume from the newest complete checkpoint in output_dir."
    )


class EvaluationSettings(Section):
    fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Share of the data held out for evaluation."
    )
    file: str | None = Field(default=None, description="Separate evaluation file.")
    steps: int = Field(default=100, ge=1, description="Evaluate every N steps.")


class DataSettings(Section):
    path: str = Field(min_length=1, description="JSON array or JSONL file of dialogues.")
    format: DataFormat = Field(default="auto", description="Record format; 'auto' detects it.")


class TrainConfig(Section):
    """A complete training run; load it with :func:`load_config`."""

    rules = TRAINING_RULES

    model: ModelSource
    data: DataSettings
    method: Method = Field(
        default="lora",
        description="lora, qlora (4-bit base) or full. On a GPTQ / AWQ checkpoint (e.g. "
        "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4) qlora trains over its own quantization; lora and "
        "full are refused there.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings | None = Field(
        default=None,
        description="4-bit quantization of the base, for method 'qlora' only; unset there, it "
        "is NF4 with double quantization and bf16 compute.",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    output_dir: str = Field(min_length=1, description="Where checkpoints and results go.")
    run_name: str = Field(
        default="local",
        min_length=1,
        max_length=253,
        description="Name of the run; the 'run' label on every metric the trainer exports.",
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=9400, description="Prometheus port on rank 0; 0 turns the endpoint off."
    )
    termination_log: str = Field(
        default="/dev/termination-log",
        description="A short JSON summary is written here when the file exists.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_quantization_for_qlora(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("method") == "qlora"
            and not data.get("quantization")
        ):
            data = {**data, "quantization": {}}
        return data

    def advice(self) -> list[str]:
        """Warnings from the tuning table: settings that work but are likely not what you want."""
        notes: list[str] = []
        low, high = RECOMMENDED_RANK
        if self.method != "full" and not low <= self.lora.r <= high:
            notes.append(f"lora.r={self.lora.r} is outside the usual range {low}-{high}")
        if self.method == "qlora" and self.training.learning_rate > QLORA_MAX_RECOMMENDED_LR:
            notes.append(
                f"training.learning_rate={self.training.learning_rate:g} is high for Q-LoRA; "
                f"{QLORA_MAX_RECOMMENDED_LR:g} or lower is usual"
            )
        if self.method == "full" and self.training.learning_rate > 1e-4:
            notes.append(
                f"training.learning_rate={self.training.learning_rate:g} is high for a full "
                "fine-tune; 1e-5 to 2e-5 is usual"
            )
        return notes

    def effective_batch_size(self, world_size: int) -> int:
        """Sequences per optimizer update across all ranks."""
        t = self.training
        return t.per_device_batch_size * t.gradient_accumulation_steps * world_size


class ConfigError(ValueError):
    """The config file can't be read or doesn't describe a valid run."""


def load_config(path: str | Path) -> TrainConfig:
    """Read a TrainConfig from a YAML or JSON file, with errors that name the field."""
    from pydantic import ValidationError

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"can't read config {file}: {err.strerror}") from err
    try:
        raw = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        kind = "JSON" if file.suffix == ".json" else "YAML"
        raise ConfigError(f"{file} is not valid {kind}: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping of settings, not {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(file, err)) from err


def format_validation_error(source: str | Path, err: Any) -> str:
    """One line per problem, each naming the dotted field path."""
    return "\n".join([f"invalid config {source}:", *(f"  {line}" for line in format_errors(err))])


def dump_config(config: TrainConfig) -> str:
    """YAML text for a config, as the operator puts it in a ConfigMap."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: ~10x faster
    return yaml.dump(config.model_dump(mode="json"), Dumper=dumper, sort_keys=False)
