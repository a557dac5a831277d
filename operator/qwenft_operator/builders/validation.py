"""The dataset validation Job: the trainer's ``qwenft data validate`` on a CPU-only pod.

It runs before any GPU is requested, so a malformed dataset fails in seconds with the
validator's report instead of after a training pod was scheduled. It also checks the model's
``config.json`` against the method and, when the run merges, the merge target: a Qwen1
checkpoint, ``method: lora`` on a GPTQ base or a merge into packed weights fail here too.
It needs no GPU node either: ``spec.scheduling``'s node selector, tolerations and affinity
(which place the GPU pods) are left out, and ``spec.validation`` places it instead, so a
typo in the GPU node selector can't block validation.
"""

from __future__ import annotations

from typing import Any

from qwenft_operator.builders import fetch, jobs, merge, paths, pods, serving
from qwenft_operator.runs import Run

# `qwenft data validate` exits 1 when the data is invalid: retrying can't help. (It exits 2
# when the tokenizer can't load, which may be a hub outage, so that one is retried.)
INVALID_DATA_EXIT_CODE = 1
VALIDATION_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}}


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
    return args


def build_validation_job(run: Run) -> dict[str, Any]:
    """Job ``<run>-validate``: one CPU pod, no GPU, fails at once on invalid data."""
    mounts = pods.Mounts(data=True, model=True)
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
