"""The training step: an Indexed Job, and a headless Service for multi-node rendezvous.

The Job runs one pod per node (``completions = parallelism = nodes``); pod ``i`` is node
rank ``i`` (its completion index) and, on more than one node, reaches rank 0 at the stable
DNS name ``<job>-0.<service>.<namespace>.svc``, which the headless Service publishes even
before the pods are ready. A single-node run needs no Service: its rendezvous stays inside
the pod (127.0.0.1). Every pod runs the same torchrun command (through a small launcher,
see :data:`LAUNCHER`):

    torchrun --nnodes N --nproc-per-node G --node-rank $(JOB_COMPLETION_INDEX)
             --master-addr <run>-train-0.<run>-train.<ns>.svc --master-port 29500
             -m qwenft_trainer.train --config /etc/qwenft/train.yaml
"""

from __future__ import annotations

from typing import Any

from qwenft_trainer import exit_codes

from qwenft_operator import labels
from qwenft_operator.builders import fetch, jobs, paths, pods
from qwenft_operator.builders.config import TRAINER_METRICS_PORT
from qwenft_operator.parsed_run import Run

MASTER_PORT = 29500
# Exit code of a training pod whose trainer refused its config or data: retrying can't help.
INVALID_INPUT_EXIT_CODE = 3
# Exit code of a training pod stopped (SIGTERM: preemption, eviction, drain, deletion) after
# its trainer wrote a complete checkpoint; the Job ignores it and a new pod resumes.
STOPPED_EXIT_CODE = exit_codes.STOPPED
# torchrun exits 1 whatever its workers' exit codes were, so a small shell wrapper runs it
# and turns the trainer's own verdict, the reason in its termination log, into
# INVALID_INPUT_EXIT_CODE or STOPPED_EXIT_CODE. SIGTERM is not forwarded to torchrun, which
# would SIGKILL the ranks 30 s later (a fixed time in older torch) whatever the pod's grace
# period: the wrapper creates the stop file instead, which every rank checks at each step
# (qwenft_trainer.stopping), so the ranks finish the step and checkpoint in the grace period.
_LAUNCHER_TEMPLATE = """set -u
stop="${STOP_FILE_ENV:-${TMPDIR:-/tmp}/qwenft-stop-$$}"
rm -f "$stop"
export STOP_FILE_ENV="$stop"
trap ': > "$stop"' TERM INT
torchrun "$@" &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
rm -f "$stop"
log="${QWENFT_TERMINATION_LOG:-/dev/termination-log}"
if [ "$rc" -ne 0 ] && grep -Eqs '"reason": *"INVALID_INPUT_REASONS"' "$log"; then
  exit INVALID_INPUT_EXIT_CODE
fi
if [ "$rc" -ne 0 ] && grep -Eqs '"reason": *"STOPPED_REASON"' "$log"; then
  exit STOPPED_EXIT_CODE
fi
exit "$rc"
"""


def _one_of(words: tuple[str, ...]) -> str:
    """An extended regex matching exactly ``words`` (CamelCase names, no regex syntax),
    written as ``Prefix(RestA|RestB)`` around their common prefix."""
    prefix = words[0]
    while not all(word.startswith(prefix) for word in words):
        prefix = prefix[:-1]
    return prefix + "(" + "|".join(word[len(prefix) :] for word in words) + ")"


LAUNCHER = (
    _LAUNCHER_TEMPLATE.replace("STOP_FILE_ENV", exit_codes.STOP_FILE_ENV)
    .replace("INVALID_INPUT_REASONS", _one_of(exit_codes.INVALID_INPUT_REASONS))
    .replace("STOPPED_REASON", exit_codes.STOPPED_REASON)
    .replace("INVALID_INPUT_EXIT_CODE", str(INVALID_INPUT_EXIT_CODE))
    .replace("STOPPED_EXIT_CODE", str(STOPPED_EXIT_CODE))
)
LAUNCHER_COMMAND = ["/bin/sh", "-c", LAUNCHER, "torchrun"]
# Default grace periods (spec.runPolicy.terminationGracePeriodSeconds unset), see
# termination_grace_seconds and docs/qwenfinetune.md.
ADAPTER_GRACE_SECONDS = 300
FULL_GRACE_SECONDS = 1800


def termination_grace_seconds(run: Run) -> int:
    """Seconds a stopping training pod gets to finish its step and write a checkpoint.

    ``spec.runPolicy.terminationGracePeriodSeconds`` when set; otherwise a default by what a
    checkpoint holds: an adapter and its optimizer state (megabytes to a few GB) or every
    weight with its optimizer state (about 14 bytes per parameter under mixed-precision Adam).
    """
    chosen = run.spec.run_policy.termination_grace_period_seconds
    if chosen is not None:
        return chosen
    return FULL_GRACE_SECONDS if run.spec.method == "full" else ADAPTER_GRACE_SECONDS


def needs_rendezvous_service(run: Run) -> bool:
    """Whether the run spans nodes, so that its pods must find rank 0 through a Service."""
    return run.spec.resources.nodes > 1


def job_backoff_limit(run: Run) -> int:
    """The training Job's ``backoffLimit``.

    A single-node Job retries its pod itself, up to ``runPolicy.backoffLimit``. A
    multi-node Job fails at its first counted pod failure (0): a replacement of one rank
    could not join the rendezvous the other ranks hold, so the operator restarts every
    rank together and counts the failures against ``runPolicy.backoffLimit`` itself
    (:mod:`qwenft_operator.gang`).
    """
    return 0 if needs_rendezvous_service(run) else run.spec.run_policy.backoff_limit


def master_address(run: Run) -> str:
    """DNS name of the rank-0 pod (loopback on a single node)."""
    if not needs_rendezvous_service(run):
        return "127.0.0.1"
    names = run.names
    return f"{names.train_job}-0.{names.train_service}.{run.namespace}.svc"


def build_torchrun_args(run: Run) -> list[str]:
    """torchrun's arguments (the training container's ``args``, the same in every pod)."""
    resources = run.spec.resources
    return [
        "--nnodes", str(resources.nodes),
        "--nproc-per-node", str(max(resources.gpus_per_node, 1)),
        "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--master-addr", master_address(run),
        "--master-port", str(MASTER_PORT),
        "-m", "qwenft_trainer.train",
        "--config", paths.CONFIG_FILE,
    ]  # fmt: skip


def build_headless_service(run: Run) -> dict[str, Any]:
    """Service ``<run>-train`` without a cluster IP: one DNS record per training pod."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": pods.object_meta(run, run.names.train_service, "train"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels.build_selector(run.name, "train"),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def build_train_job(run: Run) -> dict[str, Any]:
    """Indexed Job ``<run>-train``: one pod per node, GPUs, shared memory, checkpoints."""
    spec = run.spec
    mounts = pods.Mounts(data=True, model=True, output=True, config=True, shm=True)
    pod_spec = pods.pod_spec_base(run, mounts)
    if needs_rendezvous_service(run):
        pod_spec["subdomain"] = run.names.train_service
    pod_spec["terminationGracePeriodSeconds"] = termination_grace_seconds(run)
    fetcher = fetch.build_fetch_container(run)
    if fetcher is not None:
        pod_spec["initContainers"] = [fetcher]
    index = {"fieldPath": f"metadata.annotations['{labels.JOB_COMPLETION_INDEX_ANNOTATION}']"}
    pod_spec["containers"] = [
        pods.trainer_container(
            run,
            name="trainer",
            command=LAUNCHER_COMMAND,
            args=build_torchrun_args(run),
            env=[
                {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": index}},
                *pods.model_env(run),
            ],
            ports=[{"name": "metrics", "containerPort": TRAINER_METRICS_PORT}],
            resources=pods.resources(
                None,
                gpus=spec.resources.gpus_per_node,
                gpu_resource=run.gpu_resource,
                requests=spec.resources.requests,
                limits=spec.resources.limits,
            ),
            mounts=mounts,
        )
    ]
    policy = spec.run_policy
    extra: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.resources.nodes,
        "parallelism": spec.resources.nodes,
        "suspend": spec.suspend or spec.scheduling.queue_name is not None,
    }
    if policy.active_deadline_seconds is not None:
        extra["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        extra["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    queue = spec.scheduling.queue_name
    return jobs.build_job(
        run,
        name=run.names.train_job,
        component="train",
        pod_spec=pod_spec,
        backoff_limit=job_backoff_limit(run),
        fail_on_exit_codes=[INVALID_INPUT_EXIT_CODE],
        ignore_exit_codes=[STOPPED_EXIT_CODE],
        extra_labels={labels.KUEUE_QUEUE_KEY: queue} if queue else None,
        extra_spec=extra,
    )
