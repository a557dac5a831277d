"""The trainer config a run renders, and the ConfigMap that carries it to the pods.

The trainer config is the trainer's own ``TrainConfig`` with the spec's training sections
copied in unchanged; only the locations are translated to where the pods see them. The
hub token never enters it: the config names the environment variable the token is in.
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer.config import DataSettings, ModelSource, TrainConfig, dump_config

from qwenft_operator.builders import paths, pods
from qwenft_operator.parsed_run import Run

TRAINER_METRICS_PORT = 9400


def build_train_config(run: Run) -> TrainConfig:
    """The ``TrainConfig`` every training pod loads from ``/etc/qwenft/train.yaml``."""
    spec = run.spec
    hub = spec.model.hub
    model = ModelSource(
        name_or_path=paths.model_location(run),
        revision=hub.revision if hub else None,
        token_env=pods.TOKEN_ENV,
        trust_remote_code=spec.model.trust_remote_code,
        cache_dir=paths.HF_HOME if spec.model.cache else None,
    )
    evaluation = spec.evaluation.model_copy(update={"file": paths.evaluation_file(run)})
    return TrainConfig(
        model=model,
        data=DataSettings(path=paths.dataset_file(run), format=spec.dataset.format),
        method=spec.method,
        lora=spec.lora.model_copy(),
        quantization=spec.quantization.model_copy() if spec.quantization else None,
        training=spec.training.model_copy(),
        deepspeed=spec.deepspeed.model_copy(),
        checkpoint=spec.checkpoint.model_copy(),
        evaluation=evaluation,
        output_dir=paths.output_dir(run),
        run_name=run.name,
        metrics_port=TRAINER_METRICS_PORT,
    )


def build_config_map(run: Run) -> dict[str, Any]:
    """ConfigMap ``<run>-config`` with the rendered ``train.yaml``."""
    text = dump_config(build_train_config(run))
    meta = pods.object_meta(run, run.names.config_map, "train")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {paths.CONFIG_KEY: text},
    }
