"""``qwenft estimate``: the GPU memory a QwenFineTune needs, per GPU, without a cluster.

The operator runs the same estimate while it validates a run (condition ``FitsGPU``); this
command prints it for a manifest before it is applied: the breakdown by part, and with
``--gpu-memory`` the verdict and the changes that would make a run fit. The model's shape
comes from ``--model-config`` (its ``config.json``), else from the known shapes of common
Qwen hub checkpoints.

    qwenft estimate examples/lora-single-gpu.yaml
    qwenft estimate run.yaml --model-config /models/qwen/config.json --gpu-memory 80Gi

Exit status: 0 when it fits (or no --gpu-memory was given), 1 when it can't fit, 2 when
the manifest or the model's shape can't be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubernetes.utils.quantity import parse_quantity
from qwenft_trainer.fit_estimate import estimate_memory, fixes_that_fit, judge
from qwenft_trainer.model_shapes import KNOWN_CONFIGS, ModelShape, ShapeError

from qwenft_operator import gpu_fit
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.parsed_run import Run
from qwenft_operator.spec import ManifestError, load_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft estimate",
        description="Estimate the GPU memory a QwenFineTune manifest needs on each GPU.",
        epilog="example: qwenft estimate examples/lora-single-gpu.yaml --gpu-memory 80Gi",
    )
    parser.add_argument("manifest", type=Path, help="QwenFineTune manifest (YAML)")
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="CONFIG_JSON",
        help="the base model's config.json (default: the known shape of spec.model.hub.id; "
        f"known: {', '.join(sorted(KNOWN_CONFIGS))}, with their -Instruct/-Base and "
        "-GPTQ-Int4/-GPTQ-Int8/-AWQ releases)",
    )
    parser.add_argument(
        "--gpu-memory",
        metavar="QUANTITY",
        help="memory of one GPU, e.g. 80Gi (default: spec.resources.gpuMemory; unset: no verdict)",
    )
    return parser


def _model_config(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    if args.model_config is not None:
        try:
            found = json.loads(args.model_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ShapeError(f"can't read --model-config {args.model_config}: {err}") from err
        if not isinstance(found, dict):
            raise ShapeError(f"--model-config {args.model_config} is not a JSON object")
        return found
    config, _ = gpu_fit.model_config_of(run, None)
    if config is None:
        hub = run.spec.model.hub
        name = hub.id if hub is not None else "a model from a PVC or path"
        raise ShapeError(
            f"the shape of {name} is not known here: pass its config.json with --model-config"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as err:
        print(f"qwenft estimate: {err}", file=sys.stderr)
        return 2
    run = Run(name=manifest.metadata.name, namespace="default", uid="", spec=manifest.spec)
    resources = run.spec.resources
    gpus = resources.nodes * resources.gpus_per_node
    if gpus == 0:
        print("qwenft estimate: spec.resources.gpusPerNode is 0: the run trains on the CPU")
        return 0
    try:
        shape = ModelShape.from_config(_model_config(args, run))
    except ShapeError as err:
        print(f"qwenft estimate: {err}", file=sys.stderr)
        return 2
    train = build_train_config(run)
    estimate = estimate_memory(shape, train, gpus)
    print(estimate.render())
    limit = args.gpu_memory or resources.gpu_memory
    if limit is None:
        return 0
    try:
        memory = int(parse_quantity(limit))
    except ValueError:
        print(f"qwenft estimate: --gpu-memory {limit!r} is not a quantity (e.g. 80Gi)")
        return 2
    verdict = judge(estimate, memory, fixes=fixes_that_fit(shape, train, gpus, memory))
    print(f"{verdict.status}: {verdict.message}")
    return 1 if verdict.status == "too-large" else 0


if __name__ == "__main__":
    raise SystemExit(main())
