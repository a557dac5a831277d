"""The dataset validation Job: the trainer's ``qwenft data validate`` on a CPU-only pod.

It runs before any GPU is requested, so a malformed dataset fails in seconds with the
validator's report instead of after a training pod was scheduled. It also checks the model's
``config.json`` against the method and, when the run merges, the merge target: a Qwen1
checkpoint, ``method: lora`` on a GPTQ base or a merge into packed weights fail here too.
It needs no GPU node either: ``spec.scheduling``'s node selector, tolerations and affinity
(which place the GPU pods) are left out, and ``spec.validation`` places it instead, so a
typo in the GPU node selector can't block validation.

A dataset that passes is tokenized there too, for the run's rendered trainer config (passed
in :data:`TRAIN_CONFIG_ENV`), into the token cache on the output volume: the training pods
load those samples instead of validating and tokenizing again while their GPUs wait.
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer import exit_codes
from qwenft_trainer.config import dump_config

from qwenft_operator.builders import config, fetch, jobs, merge, paths, pods, serving
from qwenft_operator.parsed_run import Run

# `qwenft data validate` exits VALIDATION_FAILED when the data is invalid: retrying can't
# help. (VALIDATION_UNREADABLE, a tokenizer that can't load, may be a hub outage: retried.)
INVALID_DATA_EXIT_CODE = exit_codes.VALIDATION_FAILED
VALIDATION_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}}
# The rendered trainer config (YAML) whose token cache the validator writes.
TRAIN_CONFIG_ENV = "QWENFT_TRAIN_CONFIG"


def build_validation_args(run: Run) -> list[str]:
    """The validator's command line."""
    spec = run.spec
    args = [
        "qwenft", "data", "validate", paths.dataset_file(run),
        "--model", paths.model_location(run),
        "--max-seq-length", str(spec.training.max_seq_length),
        "--format", spec.dataset.format,
        "--thinking", spec.training.thinking,
        "--json",
    ]  # fmt: skip
    hub = spec.model.hub
    if hub is not None and hub.revision:
        args += ["--revision", hub.revision]  # the tokenizer training will load
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    if not spec.training.packing:
        args.append("--no-packing")  # the report's packing line says what training will do
    if spec.training.attention != "auto":
        args += ["--attention", spec.training.attention]  # and its attention line
    args += ["--method", spec.method]
    if serving.needs_merge(run):
        args += ["--merge-into", merge.merge_base(run)]
    return [*args, "--token-cache-from-env", TRAIN_CONFIG_ENV]


def build_validation_job(run: Run) -> dict[str, Any]:
    """Job ``<run>-validate``: one CPU pod, no GPU, fails at once on invalid data."""
    mounts = pods.Mounts(data=True, model=True, output=True)  # output: the token cache
    own = run.spec.validation
    pod_spec = pods.pod_spec_base(run, mounts, run_placement=False)
    pod_spec.update(pods.placement(own.node_selector, own.tolerations))
    fetcher = fetch.build_fetch_container(run)
    if fetcher is not None:
        pod_spec["initContainers"] = [fetcher]
    pod_spec["containers"] = [
        pods.trainer_container(
            run,
            name="validate",
            command=build_validation_args(run),
            resources=VALIDATION_RESOURCES,
            mounts=mounts,
            env=[
                *pods.model_env(run),
                {"name": TRAIN_CONFIG_ENV, "value": dump_config(config.build_train_config(run))},
            ],
        )
    ]
    return jobs.build_job(
        run,
        name=run.names.validate_job,
        component="validate",
        pod_spec=pod_spec,
        backoff_limit=2,
        fail_on_exit_codes=[INVALID_DATA_EXIT_CODE],
        extra_spec={"activeDeadlineSeconds": own.active_deadline_seconds},
    )
