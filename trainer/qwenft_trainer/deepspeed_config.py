"""The DeepSpeed config of a run, built from its TrainConfig.

DeepSpeed reads its own JSON config, and a hand-written one drifts from the trainer's
settings (batch size, accumulation, clipping, precision) until the two disagree and
DeepSpeed refuses to start. Here every value the Hugging Face Trainer already knows is
``"auto"``, so transformers fills it from the ``TrainingArguments`` built from the same
TrainConfig; only what DeepSpeed alone needs (ZeRO stage, offload targets) is spelled out.

    config = build_deepspeed_config(load_config("run.yaml"))   # None when DeepSpeed is off
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer.config import TrainConfig

AUTO = "auto"
# DeepSpeed prints its own step lines every N steps; the trainer logs steps itself.
QUIET_STEPS = 1_000_000_000


def _offload(device: str = "cpu") -> dict[str, Any]:
    return {"device": device, "pin_memory": True}


def build_zero_config(config: TrainConfig) -> dict[str, Any]:
    """The ``zero_optimization`` section for the configured stage and offload."""
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(
            overlap_comm=True,
            contiguous_gradients=True,
            reduce_scatter=True,
            reduce_bucket_size=AUTO,
            allgather_bucket_size=int(5e8),
        )
    if ds.zero_stage == 3:
        zero.pop("allgather_bucket_size")
        zero.update(
            stage3_prefetch_bucket_size=AUTO,
            stage3_param_persistence_threshold=AUTO,
            stage3_max_live_parameters=int(1e9),
            stage3_max_reuse_distance=int(1e9),
            # Gather the shards when saving, so checkpoints and the final output hold
            # ordinary weights (or an ordinary peft adapter) instead of ZeRO shards only.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = _offload()
    if ds.offload_parameters:
        zero["offload_param"] = _offload()
    return zero


def build_deepspeed_config(config: TrainConfig) -> dict[str, Any] | None:
    """The DeepSpeed config dict for ``TrainingArguments(deepspeed=...)``, or None when off.

    Batch sizes, accumulation, clipping and precision are ``"auto"``: transformers fills
    them from the TrainingArguments, so TrainConfig stays the one source of truth. No
    optimizer is named unless the optimizer state is offloaded: the Trainer's own AdamW
    is handed to DeepSpeed then. With offload DeepSpeed needs its CPU Adam, which it
    builds from the ``optimizer`` section (learning rate, betas, eps and weight decay
    are ``"auto"`` too).
    """
    if not config.deepspeed.enabled:
        return None
    ds_config: dict[str, Any] = {
        "train_batch_size": AUTO,
        "train_micro_batch_size_per_gpu": AUTO,
        "gradient_accumulation_steps": AUTO,
        "gradient_clipping": AUTO,
        "bf16": {"enabled": AUTO},
        "fp16": {
            "enabled": AUTO,
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": build_zero_config(config),
        "steps_per_print": QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    if config.deepspeed.offload_optimizer:
        ds_config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": AUTO, "betas": AUTO, "eps": AUTO, "weight_decay": AUTO},
        }
    return ds_config
