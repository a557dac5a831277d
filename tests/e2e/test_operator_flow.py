"""The operator on the real control plane: runs from apply to Ready, failures, suspend, GC.

The operator runs as a subprocess (``python -m qwenft_operator.main``, cluster-wide) against
the local API server; kwok runs the pods (Job pods succeed after a second, Deployment pods
become Ready). Covers:
- the shipped examples (multi-node Q-LoRA with ZeRO-2, single-GPU LoRA, full fine-tune)
  go Validating -> Training -> (Merging) -> Deploying -> Ready, with exactly the expected
  children, training pods bound to fake GPU nodes (the Q-LoRA run's two pods on the two
  H100 nodes, 8 GPUs each, node ranks 0 and 1 with the same torchrun arguments and rank 0's
  address), status endpoint/outputs, and an Event per phase change; an example with
  evaluationPrompts is smoke-tested once Ready: the in-cluster endpoint name does not
  resolve from the operator here, so SmokeTested turns False (EndpointUnreachable, after
  the retries) with status.smokeTest recorded, and the run stays Ready;
- a training pod exiting 3 with a message (kwok failure annotation) ends in Failed,
  reason TrainingFailed, with the exit code and message in the condition and a Warning
  Event;
- suspend and resume: the running Job is suspended (its pods go), phase Suspended, then
  resumed and the run finishes;
- a new ``inference.checkpoint`` on a Ready run: a new merge Job with the new
  ``--checkpoint`` argument, then (only once it completed) the Deployment rolls onto pods
  annotated with the new choice, the run Ready on the new generation, with an Event for
  each step;
- new ``inference.replicas`` (1 -> 2) on a Ready run: the server Deployment is replaced in
  place with 2 replicas and a new spec digest, the run Ready again on the new generation,
  with one ServerUpdated Event;
- deleting a run removes every child (ownerReferences and the garbage collector);
- ``kubectl get qft`` shows the printer columns.

Queued runs under a real Kueue are in test_kueue.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from operatorkit import (
    children,
    condition,
    create_run,
    example,
    get_run,
    patch_run,
    pods_of,
    wait_phase,
    wait_until,
)
from qwenft_operator.labels import CHECKPOINT_ANNOTATION, SPEC_DIGEST_ANNOTATION

pytestmark = pytest.mark.e2e
KWOK_FAIL_CODE = "qwenft.io/kwok-fail-exit-code"
KWOK_FAIL_MESSAGE = "qwenft.io/kwok-fail-message"
KWOK_AFTER = "qwenft.io/kwok-complete-after"


def events_of(api: client.ApiClient, namespace: str, run: str) -> list[Any]:
    events: list[Any] = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={run},involvedObject.kind=QwenFineTune"
        )
        .items
    )
    return events


def event_reasons_including(
    api: client.ApiClient, namespace: str, run: str, wanted: tuple[str, ...]
) -> list[str] | None:
    """The reasons of the run's Events once all of ``wanted`` are among them, else None."""
    reasons = [e.reason for e in events_of(api, namespace, run)]
    return reasons if set(wanted) <= set(reasons) else None


def train_job(api: client.ApiClient, namespace: str, run: str) -> Any:
    return client.BatchV1Api(api).read_namespaced_job(f"{run}-train", namespace)


def expected_children(run: str, *, merge: bool, nodes: int) -> dict[str, list[str]]:
    jobs = [f"{run}-validate", f"{run}-train", *([f"{run}-merge"] if merge else [])]
    rendezvous = [f"{run}-train"] if nodes > 1 else []  # single-node torchrun meets in-pod
    return {
        "Job": sorted(jobs),
        "ConfigMap": [f"{run}-config"],
        "Service": sorted([*rendezvous, f"{run}-serve"]),
        "Deployment": [f"{run}-serve"],
    }


# (example, run name, merge job expected, GPUs per node, nodes)
EXAMPLES = [
    ("qlora-multinode-zero2", "qlora-72b", True, 8, 2),
    ("lora-single-gpu", "support-lora", True, 1, 1),
    ("full-finetune", "full-1p5b", False, 4, 1),
]


@pytest.mark.parametrize(
    ("name", "run", "merge", "gpus", "nodes"), EXAMPLES, ids=[e[0] for e in EXAMPLES]
)
def test_example_reaches_ready(
    kube_client: client.ApiClient, namespace: str, name: str, run: str, merge: bool,
    gpus: int, nodes: int,
) -> None:  # fmt: skip
    body = example(name)
    create_run(kube_client, namespace, body)
    ready = wait_phase(kube_client, namespace, run, "Ready", timeout=90)
    status = ready["status"]
    assert status["endpoint"]["url"] == f"http://{run}-serve.{namespace}.svc:8000/v1"
    assert status["outputs"]["adapter"].startswith("/output/")
    assert ("merged" in status["outputs"]) is merge
    for type_ in ("Validated", "Trained", "Ready"):
        found = condition(ready, type_)
        assert found is not None and found["status"] == "True", (type_, status["conditions"])
    assert children(kube_client, namespace, run) == expected_children(run, merge=merge, nodes=nodes)

    pods = pods_of(kube_client, namespace, run, "train")
    assert len(pods) == nodes
    master = f"{run}-train-0.{run}-train.{namespace}.svc" if nodes > 1 else "127.0.0.1"
    ranks = set()
    for pod in pods:
        assert pod.spec.node_name and pod.spec.node_name.startswith("gpu-node-")
        trainer = pod.spec.containers[0]
        assert trainer.resources.limits["nvidia.com/gpu"] == str(gpus)
        args = trainer.args
        assert args[args.index("--nnodes") + 1] == str(nodes)
        assert args[args.index("--nproc-per-node") + 1] == str(gpus)
        assert args[args.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
        assert args[args.index("--master-addr") + 1] == master
        rank = pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]
        ranks.add(rank)
        assert pod.spec.hostname == f"{run}-train-{rank}"
        assert pod.spec.subdomain == (f"{run}-train" if nodes > 1 else None)
    assert ranks == {str(i) for i in range(nodes)}
    if name == "qlora-multinode-zero2":
        # nodeSelector picks the H100 nodes and each pod takes all 8 GPUs of one. kwok ends
        # a Job pod a second after it starts, so under load rank 1 may be scheduled after
        # rank 0 finished, on the same node: assert the node pool, not two distinct nodes.
        assert {p.spec.node_name for p in pods} <= {"gpu-node-0", "gpu-node-1"}
    # The operator writes the status first and the Event after it: wait for the last one.
    phases = ("Validating", "Training", "Deploying", "Ready")
    reasons = wait_until(
        "an Event for every phase",
        lambda: event_reasons_including(kube_client, namespace, run, phases),
        timeout=30,
    )
    assert ("Merging" in reasons) is merge
    if body["spec"].get("evaluationPrompts"):
        assert_smoke_test_unreachable(kube_client, namespace, run, body)


def assert_smoke_test_unreachable(
    api: client.ApiClient, namespace: str, run: str, body: dict[str, Any]
) -> None:
    def tested() -> dict[str, Any] | None:
        found = get_run(api, namespace, run)
        smoke = condition(found, "SmokeTested")
        return found if smoke and smoke["status"] != "Unknown" else None

    found = wait_until("the smoke test to finish", tested, timeout=30)
    smoke = condition(found, "SmokeTested")
    assert smoke is not None and smoke["status"] == "False", smoke
    assert smoke["reason"] == "EndpointUnreachable", smoke
    assert f"{run}-serve.{namespace}.svc" in smoke["message"]
    assert found["status"]["phase"] == "Ready"
    prompts = len(body["spec"]["evaluationPrompts"])
    result = found["status"]["smokeTest"]
    assert (result["passed"], result["total"], result["failed"]) == (False, prompts, prompts)

    def warned() -> bool:
        return any(e.reason == "EndpointUnreachable" for e in events_of(api, namespace, run))

    wait_until("the EndpointUnreachable event", warned, timeout=10)


def suspended_run(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> str:
    """Create ``body`` suspended and wait for its (suspended, never started) training Job."""
    run: str = body["metadata"]["name"]
    body["spec"]["suspend"] = True
    create_run(api, namespace, body)
    wait_phase(api, namespace, run, "Suspended", timeout=30)
    assert train_job(api, namespace, run).spec.suspend is True
    return run


def annotate_train_pods(
    api: client.ApiClient, namespace: str, run: str, annotations: dict[str, str]
) -> None:
    """Set annotations on the pod template of a suspended Job that never started."""
    client.BatchV1Api(api).patch_namespaced_job(
        f"{run}-train",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": annotations}}}},
    )


def test_failing_training_pod_fails_the_run_with_its_exit_code_and_message(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = suspended_run(kube_client, namespace, example("lora-single-gpu"))
    message = "CUDA out of memory while allocating 2.00 GiB"
    annotate_train_pods(
        kube_client, namespace, run, {KWOK_FAIL_CODE: "3", KWOK_FAIL_MESSAGE: message}
    )
    patch_run(kube_client, namespace, run, {"spec": {"suspend": False}})
    failed = wait_phase(kube_client, namespace, run, "Failed", timeout=60)
    reason = condition(failed, "Failed")
    assert reason is not None and reason["reason"] == "TrainingFailed"
    assert "code 3" in reason["message"] and message in reason["message"]
    wait_until(
        "a TrainingFailed Warning Event with the pod's message",
        lambda: any(
            e.type == "Warning" and e.reason == "TrainingFailed" and message in e.message
            for e in events_of(kube_client, namespace, run)
        ),
        timeout=30,
    )
    # Failed is final: nothing is merged or served.
    assert children(kube_client, namespace, run)["Deployment"] == []


def test_suspend_and_resume(kube_client: client.ApiClient, namespace: str) -> None:
    run = suspended_run(kube_client, namespace, example("lora-single-gpu"))
    # The pods run until the test ends them: one that ended on its own before the suspend
    # reached its Job would finish the run instead.
    annotate_train_pods(kube_client, namespace, run, {KWOK_AFTER: "1h"})
    patch_run(kube_client, namespace, run, {"spec": {"suspend": False}})

    def running() -> bool:
        found = condition(get_run(kube_client, namespace, run), "Training")
        return found is not None and found["reason"] == "TrainingRunning"

    wait_until("training pods to run", running, timeout=30)
    patch_run(kube_client, namespace, run, {"spec": {"suspend": True}})
    parked = wait_phase(kube_client, namespace, run, "Suspended", timeout=30)
    suspended = condition(parked, "Suspended")
    assert suspended is not None and suspended["status"] == "True"
    assert train_job(kube_client, namespace, run).spec.suspend is True
    wait_until(
        "the suspended Job's pods to go",
        lambda: all(
            p.status.phase != "Running" for p in pods_of(kube_client, namespace, run, "train")
        ),
        timeout=30,
    )
    patch_run(kube_client, namespace, run, {"spec": {"suspend": False}})
    resumed_pods = wait_until(
        "the resumed Job's training pod to run",
        lambda: [
            p for p in pods_of(kube_client, namespace, run, "train") if p.status.phase == "Running"
        ],
        timeout=30,
    )
    for pod in resumed_pods:  # kwok ends them now
        client.CoreV1Api(kube_client).patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"annotations": {KWOK_AFTER: "0s"}}}
        )
    ready = wait_phase(kube_client, namespace, run, "Ready", timeout=60)
    resumed = condition(ready, "Suspended")
    assert resumed is not None and (resumed["status"], resumed["reason"]) == ("False", "Resumed")


def test_deleting_a_run_removes_its_children(kube_client: client.ApiClient, namespace: str) -> None:
    run = "support-lora"
    create_run(kube_client, namespace, example("lora-single-gpu"))
    wait_phase(kube_client, namespace, run, "Ready", timeout=60)
    client.CustomObjectsApi(kube_client).delete_namespaced_custom_object(
        "finetune.qwenft.io", "v1alpha1", namespace, "qwenfinetunes", run
    )

    def gone() -> bool:
        left = children(kube_client, namespace, run)
        pods = (
            client.CoreV1Api(kube_client)
            .list_namespaced_pod(namespace, label_selector=f"finetune.qwenft.io/name={run}")
            .items
        )
        return not any(left.values()) and not pods

    wait_until("the garbage collector to delete every child", gone, timeout=60)


def test_kubectl_get_shows_printer_columns(kube_client: client.ApiClient, namespace: str) -> None:
    import subprocess

    run = "support-lora"
    create_run(kube_client, namespace, example("lora-single-gpu"))
    wait_phase(kube_client, namespace, run, "Ready", timeout=60)
    out = subprocess.run(
        ["kubectl", "get", "qft", "-n", namespace], capture_output=True, text=True, check=True
    ).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "READY", "ENDPOINT", "AGE"]
    assert row.split()[:2] == [run, "Ready"]
    assert f"http://{run}-serve.{namespace}.svc:8000/v1" in row


def merge_job_other_than(api: client.ApiClient, namespace: str, run: str, uid: str) -> Any:
    """The run's merge Job, once it is another one than the Job with ``uid``."""
    jobs = client.BatchV1Api(api).list_namespaced_job(
        namespace,
        label_selector=f"finetune.qwenft.io/name={run},finetune.qwenft.io/component=merge",
    )
    return next((j for j in jobs.items if j.metadata.uid != uid), None)


def serving_choice(api: client.ApiClient, namespace: str, run: str, choice: str) -> Any:
    """The run's ReplicaSet for ``choice`` once its pods are all ready (the rollout is done)."""
    sets = client.AppsV1Api(api).list_namespaced_replica_set(
        namespace,
        label_selector=f"finetune.qwenft.io/name={run},finetune.qwenft.io/component=serve",
    )
    for rs in sets.items:
        annotations = rs.spec.template.metadata.annotations or {}
        wanted = rs.spec.replicas or 0
        if annotations.get(CHECKPOINT_ANNOTATION) == choice and wanted > 0:
            return rs if (rs.status.ready_replicas or 0) >= wanted else None
    return None


def test_a_new_checkpoint_on_a_ready_run_merges_again_then_rolls_the_server(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = "support-lora"
    create_run(kube_client, namespace, example("lora-single-gpu"))
    wait_phase(kube_client, namespace, run, "Ready", timeout=60)
    batch, apps = client.BatchV1Api(kube_client), client.AppsV1Api(kube_client)
    first = batch.read_namespaced_job(f"{run}-merge", namespace)
    assert first.metadata.annotations[CHECKPOINT_ANNOTATION] == "final"
    assert "--checkpoint" not in first.spec.template.spec.containers[0].command
    wait_until("the pods serving the final adapter", lambda: serving_choice(
        kube_client, namespace, run, "final"), timeout=30)  # fmt: skip

    patch_run(kube_client, namespace, run, {"spec": {"inference": {"checkpoint": 200}}})
    generation = get_run(kube_client, namespace, run)["metadata"]["generation"]
    second = wait_until(
        "a new merge Job",
        lambda: merge_job_other_than(kube_client, namespace, run, first.metadata.uid),
        timeout=60,
    )
    command = second.spec.template.spec.containers[0].command
    assert command[command.index("--checkpoint") + 1] == "200"
    assert second.metadata.annotations[CHECKPOINT_ANNOTATION] == "200"

    rolled = wait_until(
        "the Deployment rolled onto checkpoint 200",
        lambda: serving_choice(kube_client, namespace, run, "200"),
        timeout=60,
    )
    # the server moved only once the new merge had finished
    done = batch.read_namespaced_job(f"{run}-merge", namespace)
    assert done.metadata.uid == second.metadata.uid and done.status.completion_time is not None
    assert rolled.metadata.creation_timestamp >= done.status.completion_time
    deployment = apps.read_namespaced_deployment(f"{run}-serve", namespace)
    assert deployment.spec.template.metadata.annotations[CHECKPOINT_ANNOTATION] == "200"
    pods = [p for p in pods_of(kube_client, namespace, run, "serve") if p.status.phase == "Running"]
    assert pods and all(
        (p.metadata.annotations or {}).get(CHECKPOINT_ANNOTATION) == "200" for p in pods
    )

    def ready_again() -> dict[str, Any] | None:
        found = get_run(kube_client, namespace, run)
        ready = condition(found, "Ready")
        current = ready is not None and ready["observedGeneration"] == generation
        return found if current and ready["status"] == "True" else None

    wait_until("the run Ready on the new generation", ready_again, timeout=60)
    wanted = {
        "merge redone for checkpoint 200 (was final)",
        "the server rolls onto checkpoint 200 (was final)",
    }
    wait_until(
        "both CheckpointChanged Events (merge redone, server rolled)",
        lambda: (
            wanted
            <= {
                e.message
                for e in events_of(kube_client, namespace, run)
                if e.reason == "CheckpointChanged"
            }
        ),
        timeout=30,
    )


def test_new_replicas_on_a_ready_run_reach_the_server_deployment(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = "support-lora"
    create_run(kube_client, namespace, example("lora-single-gpu"))
    wait_phase(kube_client, namespace, run, "Ready", timeout=60)
    apps = client.AppsV1Api(kube_client)
    before = apps.read_namespaced_deployment(f"{run}-serve", namespace)
    assert before.spec.replicas == 1
    old_digest = before.metadata.annotations[SPEC_DIGEST_ANNOTATION]

    patch_run(kube_client, namespace, run, {"spec": {"inference": {"replicas": 2}}})
    generation = get_run(kube_client, namespace, run)["metadata"]["generation"]

    def two_ready() -> Any:
        found = apps.read_namespaced_deployment(f"{run}-serve", namespace)
        status = found.status
        done = (
            found.spec.replicas == 2
            and (status.observed_generation or 0) >= found.metadata.generation
            and (status.updated_replicas or 0) == 2
            and (status.ready_replicas or 0) == 2
        )
        return found if done else None

    after = wait_until("the Deployment with 2 ready replicas", two_ready, timeout=60)
    assert after.metadata.annotations[SPEC_DIGEST_ANNOTATION] != old_digest
    # replaced in place (the same object), its spec changed once
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation == before.metadata.generation + 1

    def ready_again() -> dict[str, Any] | None:
        found = get_run(kube_client, namespace, run)
        ready = condition(found, "Ready")
        current = ready is not None and ready["observedGeneration"] == generation
        on_time = found.get("status", {}).get("observedGeneration") == generation
        return found if current and on_time and ready["status"] == "True" else None

    wait_until("the run Ready on the new generation", ready_again, timeout=60)
    message = f"the server Deployment is updated to the spec of generation {generation}"
    wait_until(
        "the ServerUpdated Event",
        lambda: any(e.message == message for e in events_of(kube_client, namespace, run)),
        timeout=30,
    )
    updates = [e for e in events_of(kube_client, namespace, run) if e.reason == "ServerUpdated"]
    assert len(updates) == 1 and (updates[0].count or 1) == 1, [e.message for e in updates]
    serving = [
        p for p in pods_of(kube_client, namespace, run, "serve") if p.status.phase == "Running"
    ]
    assert len(serving) == 2
