"""TrainConfig -> Hugging Face ``TrainingArguments``.

The Trainer takes dozens of arguments; a run sets a few dozen of them from its TrainConfig
and fixes the rest to what this trainer relies on (checkpoints every N steps that carry
optimizer state for resuming, counted non-padding tokens, no third-party loggers, no
Trainer-side checkpoint rotation because :mod:`qwenft_trainer.checkpoints` prunes only
complete ones). The mapping is a pure function so a test can read it whole.

    args = build_training_arguments(config, use_cpu=True, deepspeed=None, has_eval=False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwenft_trainer.config import TrainConfig

if TYPE_CHECKING:
    from transformers import TrainingArguments

# TrainingArguments reads a float warmup in [0, 1) as a share of the total steps.
_MAX_WARMUP_SHARE = 0.999


def build_training_kwargs(
    config: TrainConfig,
    *,
    use_cpu: bool,
    deepspeed: dict[str, Any] | None,
    has_eval: bool,
    world_size: int = 1,
) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments``; pure, so the mapping is testable."""
    t = config.training
    warmup = min(t.warmup_ratio, _MAX_WARMUP_SHARE)
    kwargs: dict[str, Any] = {
        "output_dir": config.output_dir,
        "run_name": config.run_name,
        "seed": t.seed,
        "data_seed": t.seed,
        # schedule
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": float(warmup) if warmup > 0 else 0,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        # precision and memory
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "activation_checkpointing": t.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if t.gradient_checkpointing
        else None,
        # logging: telemetry callbacks consume the Trainer's logs; nothing else reports
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "disable_tqdm": True,
        "log_level": "warning",
        "log_level_replica": "error",
        # checkpoints: optimizer state included, rotation done by qwenft_trainer.checkpoints
        "save_strategy": "steps",
        "save_steps": config.checkpoint.save_steps,
        "save_total_limit": None,
        "save_only_model": False,
        # evaluation
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": config.evaluation.steps if has_eval else None,
        "prediction_loss_only": True,
        # data: items are already token ids; packed rows carry position_ids
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": not use_cpu,
        # devices
        "use_cpu": use_cpu,
        "ddp_backend": "gloo" if use_cpu and world_size > 1 else None,
        "ddp_find_unused_parameters": False,
        "deepspeed": deepspeed,
    }
    return kwargs


def build_training_arguments(
    config: TrainConfig,
    *,
    use_cpu: bool,
    deepspeed: dict[str, Any] | None,
    has_eval: bool,
    world_size: int = 1,
) -> TrainingArguments:
    """The ``TrainingArguments`` of a run (see :func:`build_training_kwargs`)."""
    from transformers import TrainingArguments

    kwargs = build_training_kwargs(
        config, use_cpu=use_cpu, deepspeed=deepspeed, has_eval=has_eval, world_size=world_size
    )
    return TrainingArguments(**kwargs)
