"""The merge Job: the trainer's ``qwenft merge`` folds the adapter into the base model.

It runs on a CPU-only pod by default (the merge loads the base in the merge dtype with
low memory use) and writes ``<output>/merged`` next to the adapter; Q-LoRA adapters are
merged into the un-quantized base (``spec.merge.base`` when the model is a GPTQ or AWQ
checkpoint).
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer import exit_codes

from qwenft_operator import labels
from qwenft_operator.builders import jobs, paths, pods
from qwenft_operator.parsed_run import Run

# `qwenft merge` exits 1 on a merge error (mismatched base, failed verification), 2 on usage
# (retrying can't help), and, given a checkpoint choice, 4 when spec.inference.checkpoint
# isn't kept.
MERGE_FAILURE_EXIT_CODES = list(exit_codes.MERGE_FAILURES)
CHECKPOINT_NOT_FOUND_EXIT_CODE = exit_codes.CHECKPOINT_NOT_FOUND


def merge_base(run: Run) -> str:
    """The model the adapter is merged into: ``spec.merge.base``, else the trained base."""
    return run.spec.merge.base or paths.model_location(run)


def build_merge_args(run: Run) -> list[str]:
    """The merge command line; a hub base is read at the revision the run trained on."""
    spec = run.spec
    args = [
        "qwenft", "merge",
        "--base", merge_base(run),
        "--adapter", paths.adapter_dir(run),
        "--output", paths.merged_dir(run),
        "--dtype", spec.merge.dtype,
        "--method", "qlora" if spec.method == "qlora" else "lora",
        "--overwrite",
    ]  # fmt: skip
    revision = paths.model_revision(run)
    if revision:
        args += ["--revision", revision]
    checkpoint = spec.inference.checkpoint
    if checkpoint is not None:  # resolved in the Job, where the output volume is
        args += ["--checkpoint", str(checkpoint)]
    return args


def build_merge_job(run: Run) -> dict[str, Any]:
    """Job ``<run>-merge``: reads the base and the adapter, writes the merged model.

    Its :data:`~qwenft_operator.labels.CHECKPOINT_ANNOTATION` records the checkpoint choice
    it merges, so a changed spec.inference.checkpoint is seen to need a new merge.
    """
    mounts = pods.Mounts(model=True, output=True)
    pod_spec = pods.pod_spec_base(run, mounts)
    pod_spec["containers"] = [
        pods.trainer_container(
            run,
            name="merge",
            command=build_merge_args(run),
            resources=pods.resources(run.spec.merge.resources),
            mounts=mounts,
        )
    ]
    job = jobs.build_job(
        run,
        name=run.names.merge_job,
        component="merge",
        pod_spec=pod_spec,
        backoff_limit=1,
        fail_on_exit_codes=MERGE_FAILURE_EXIT_CODES
        + ([CHECKPOINT_NOT_FOUND_EXIT_CODE] if run.spec.inference.checkpoint is not None else []),
    )
    choice = labels.checkpoint_value(run.spec.inference.checkpoint)
    job["metadata"]["annotations"] = {labels.CHECKPOINT_ANNOTATION: choice}
    return job
