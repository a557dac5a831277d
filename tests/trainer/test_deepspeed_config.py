"""The DeepSpeed config built from a TrainConfig.

Covers: no config when DeepSpeed is off; the whole ZeRO-2 and ZeRO-3 (+ CPU offload)
dicts; every batch/precision value left as "auto" and filled by transformers from the
TrainingArguments of the same TrainConfig, with no "auto" left and no mismatch reported.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from qwenft_trainer.arguments import build_training_arguments
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.deepspeed_config import QUIET_STEPS, build_deepspeed_config


def make_config(**deepspeed: Any) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"path": "train.jsonl"},
            "output_dir": "/tmp/out",
            "training": {
                "per_device_batch_size": 4,
                "gradient_accumulation_steps": 8,
                "max_grad_norm": 0.5,
                "precision": "bf16",
            },
            "deepspeed": deepspeed,
        }
    )


AUTO_TOP = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "steps_per_print": QUIET_STEPS,
    "wall_clock_breakdown": False,
}


def test_disabled_gives_no_config() -> None:
    assert build_deepspeed_config(make_config(enabled=False, zero_stage=3)) is None


def test_zero2_config_whole() -> None:
    assert build_deepspeed_config(make_config(enabled=True, zero_stage=2)) == {
        **AUTO_TOP,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": 500_000_000,
        },
    }


def test_zero3_with_cpu_offload_whole() -> None:
    config = make_config(
        enabled=True, zero_stage=3, offload_optimizer=True, offload_parameters=True
    )
    assert build_deepspeed_config(config) == {
        **AUTO_TOP,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu", "pin_memory": True},
        },
        # offloaded optimizer state needs DeepSpeed's CPU Adam, built from this section
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
    }


def _autos(tree: Any, path: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _autos(v, f"{path}.{k}".lstrip("."))]
    return [path] if tree == "auto" else []


@pytest.mark.parametrize(
    "deepspeed",
    [
        {"enabled": True, "zero_stage": 2},
        {"enabled": True, "zero_stage": 3, "offload_optimizer": True, "offload_parameters": True},
    ],
)
def test_transformers_fills_every_auto_from_the_same_config(deepspeed: dict[str, Any]) -> None:
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = make_config(**deepspeed)
    ds_config = build_deepspeed_config(config)
    assert ds_config is not None
    args = build_training_arguments(config, use_cpu=True, deepspeed=None, has_eval=False)
    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(ds_config))
    hf.trainer_config_process(args)

    class Model:
        class config:
            hidden_size = 896

    hf.trainer_config_finalize(args, Model(), num_training_steps=100)
    filled = hf.config
    assert _autos(filled) == []
    assert filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["gradient_accumulation_steps"] == 8
    assert filled["train_batch_size"] == 4 * 8 * args.world_size
    assert filled["gradient_clipping"] == 0.5
    assert filled["bf16"]["enabled"] is True
    assert filled["fp16"]["enabled"] is False
    assert filled["zero_optimization"]["reduce_bucket_size"] == 896 * 896
    if "optimizer" in filled:
        assert filled["optimizer"]["params"]["lr"] == config.training.learning_rate
