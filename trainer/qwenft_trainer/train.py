"""Fine-tune a Qwen model from a TrainConfig: LoRA, Q-LoRA or full, on one process or many.

The recipe: read the config, check the dataset (a bad one stops here, before any GPU
work), tokenize it, start the process group, load the model, decide how to pack the
samples (exactly, or not at all), wrap the model, resume from the newest complete
checkpoint in ``output_dir``, train with the Hugging Face Trainer (DDP, or DeepSpeed
ZeRO-2/3 from a generated config), then save the adapter or the weights, the tokenizer
and ``summary.json``. Rank and world size come from torchrun's environment, so the same
command runs on a laptop and on a multi-node GPU job. SIGTERM or Ctrl-C stops it after the
current step with a complete checkpoint (exit code 75); the same command then resumes from
that checkpoint.

The dataset is validated and tokenized once per run: rank 0 caches the samples in
``output_dir`` and the other ranks, and a restarted pod, load them
(:mod:`qwenft_trainer.token_cache`).

One process (CPU or one GPU):

    python -m qwenft_trainer.train --config examples/train-lora.yaml
    qwenft train --config examples/train-lora.yaml --max-steps 20 --output-dir /tmp/run

Two processes on one machine (GPUs: NCCL; CPUs: gloo, ``DS_ACCELERATOR=cpu`` for DeepSpeed):

    torchrun --nproc-per-node 2 -m qwenft_trainer.train --config examples/train-lora.yaml

Several nodes (run on each node; the operator's Indexed Job sets the node rank):

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:29500 \\
        -m qwenft_trainer.train --config /config/train.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qwenft_trainer import exit_codes
from qwenft_trainer.config import ConfigError, TrainConfig, format_validation_error, load_config
from qwenft_trainer.data import build_samples
from qwenft_trainer.distributed import DistributedEnv
from qwenft_trainer.summary import write_termination_log
from qwenft_trainer.telemetry import build_log_record, emit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from qwenft_trainer.data import TokenizedSample
    from qwenft_trainer.session import ModelHook
    from qwenft_trainer.stopping import StopRequest

log = logging.getLogger("qwenft_trainer.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft train",
        description="Fine-tune a model from a TrainConfig file (LoRA, Q-LoRA or full).",
    )
    parser.add_argument("--config", required=True, type=Path, help="TrainConfig YAML or JSON")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--max-steps", type=int, help="override training.max_steps")
    parser.add_argument("--save-steps", type=int, help="override checkpoint.save_steps")
    parser.add_argument("--metrics-port", type=int, help="override metrics_port (0 = off)")
    parser.add_argument("--run-name", help="override run_name (the metrics' 'run' label)")
    return parser


def apply_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """The config with command-line overrides applied and validated again."""
    from pydantic import ValidationError

    data = config.model_dump()
    for key, value in (
        ("output_dir", args.output_dir),
        ("metrics_port", args.metrics_port),
        ("run_name", args.run_name),
    ):
        if value is not None:
            data[key] = value
    if args.max_steps is not None:
        data["training"]["max_steps"] = args.max_steps
    if args.save_steps is not None:
        data["checkpoint"]["save_steps"] = args.save_steps
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error("command-line overrides", err)) from err


def check_dataset(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The validator's report text when the dataset can't be trained on, else None."""
    from qwenft_trainer.validate import validate_dataset

    files = [config.data.path] + ([config.evaluation.file] if config.evaluation.file else [])
    for path in files:
        report = validate_dataset(
            path,
            tokenizer,
            config.training.max_seq_length,
            config.data.format,
            thinking=config.training.thinking,
        )
        if not report.ok:
            return report.to_text()
        log.info("dataset %s: %s (%s)", path, report.message, report.thinking_summary)
    return None


def check_base_model(config: TrainConfig) -> str | None:
    """Why the base model can't be trained with this config (read from its config.json).

    A config.json that can't be read now (a hub outage) is left to the model load, which
    fails with its own error and is retried; only a refusal is final.
    """
    from qwenft_trainer.base_checks import BaseConfigError, base_model_problems, config_kwargs

    try:
        problems = base_model_problems(
            config.model.name_or_path,
            method=config.method,
            quantization=config.quantization,
            **config_kwargs(config.model),
        )
    except BaseConfigError as err:
        log.warning("%s", err)
        return None
    return "; ".join(problems) or None


def validated_samples(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[TokenizedSample], list[TokenizedSample] | None]:
    """:func:`check_dataset`, then :func:`build_samples`; ConfigError names what is wrong."""
    problem = check_dataset(config, tokenizer)
    if problem:
        raise ConfigError(problem)
    return build_samples(config, tokenizer)


def build_datasets(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]] | None]:
    """Train and (optional) eval items, packed when ``training.packing`` asks for it."""
    from qwenft_trainer.packing import build_features

    train, held_out = build_samples(config, tokenizer)
    t = config.training
    return build_features(train, t.max_seq_length, packing=t.packing), (
        build_features(held_out, t.max_seq_length, packing=t.packing) if held_out else None
    )


def fail(config: TrainConfig | None, reason: str, message: str) -> int:
    """Report a run that can't start: stderr, a JSON line, and the termination log."""
    print(f"qwenft train: {message}", file=sys.stderr)
    emit(build_log_record("train_failed", reason=reason, message=message.splitlines()[-1]))
    if config is not None:
        fields = {"status": "failed", "reason": reason, "message": message}
        write_termination_log(config.termination_log, fields)
    return exit_codes.INVALID


def setup_logging(env: DistributedEnv) -> None:
    level = logging.INFO if env.is_main else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s rank{env.rank} %(levelname)s %(message)s")


def main(argv: list[str] | None = None, *, on_model_prepared: ModelHook | None = None) -> int:
    """Exit codes (:mod:`qwenft_trainer.exit_codes`): 0 trained, 1 invalid config or data,
    2 usage error, 75 stopped on request with a complete checkpoint to resume from.

    ``on_model_prepared`` (for a caller in the same process, such as a test) is called with
    the model once it is prepared for its method (adapters added), before any step.
    """
    args = build_parser().parse_args(argv)
    from qwenft_trainer.stopping import StopRequest

    # a stop asked for while the data loads still counts: the session checks it first
    with StopRequest.installed(stop_file=os.environ.get(exit_codes.STOP_FILE_ENV)) as stop:
        return _train(args, stop, on_model_prepared)


def _train(args: argparse.Namespace, stop: StopRequest, on_model_prepared: ModelHook | None) -> int:
    env = DistributedEnv.from_environ()
    setup_logging(env)
    try:
        config = apply_overrides(load_config(args.config), args)
    except ConfigError as err:
        return fail(None, exit_codes.INVALID_CONFIG, str(err))

    refusal = check_base_model(config)
    if refusal:
        return fail(config, exit_codes.INVALID_CONFIG, refusal)
    from qwenft_trainer.modeling import load_tokenizer
    from qwenft_trainer.token_cache import load_or_build

    tokenizer = load_tokenizer(config.model)
    try:  # rank 0 validates and tokenizes once; the others, and restarts, load its cache
        samples = load_or_build(config, env, tokenizer, build=validated_samples)
    except ConfigError as err:
        return fail(config, exit_codes.INVALID_DATASET, str(err))

    from qwenft_trainer.session import run_training

    return run_training(
        config,
        env,
        tokenizer,
        samples.train,
        samples.eval,
        started=time.time(),
        stop=stop,
        token_cache=samples.record,
        on_model_prepared=on_model_prepared,
    )


if __name__ == "__main__":
    raise SystemExit(main())
