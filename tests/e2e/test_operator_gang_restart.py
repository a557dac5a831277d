"""The operator on the real control plane: a multi-node run restarts all its ranks together.

The real Job controller and garbage collector act on kwok's fake GPU nodes; the test plays
Kueue (the runs are queued, so each new training Job waits suspended: the test keeps its
pods running and admits it) and the kubelet (it patches a rank's pod status, as a crash
or a preemption would leave it). Covers, with the two-node Q-LoRA example:
- rank 1's pod Failed (exit code 1): the Job fails as a whole, the run records one
  restart (status.restarts 1, lastRestart cause Failure rank 1), Training reason
  Restarting naming rank 1 and the exit code, one Warning Event; while a pod of the old
  Job is held (a finalizer), the Job stays deleting, the condition names that pod and no
  new Job appears; once it is released, a new Job (another UID) is created and runs,
  never two training Jobs at once, still one restart and one Event;
- with runPolicy.backoffLimit 0: a pod with DisruptionTarget (preempted) restarts the
  gang without counting (disruptionRestarts 1, the run keeps training); a real failure
  after it is one more than backoffLimit: Failed, BackoffLimitExceeded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import (
    condition,
    create_run,
    example,
    get_run,
    pods_of,
    wait_phase,
    wait_until,
)
from qwenft_operator.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.e2e
KWOK_AFTER = "qwenft.io/kwok-complete-after"  # how long kwok keeps a Job pod running
HOLD = "qwenft.io/e2e-hold"  # a finalizer that keeps a pod from going
TRAIN = "finetune.qwenft.io/component=train"
A100 = "NVIDIA-A100-SXM4-80GB"  # gpu-node-2 and gpu-node-3 (hack/devcluster/nodes.py)


def queued_run(api: client.ApiClient, namespace: str, name: str, backoff_limit: int) -> str:
    body = example("qlora-multinode-zero2")
    body["metadata"]["name"] = name
    body["spec"]["runPolicy"]["backoffLimit"] = backoff_limit
    body["spec"]["scheduling"]["queueName"] = "team-a"  # each new Job waits for admission
    # Small ranks on the A100 nodes: the shared nodes may still carry other tests' pods (a
    # pod whose Job is gone can stay Terminating on a kwok node), the gang must be placed
    # whole, and what it leaves behind must not take the H100s later tests fill.
    body["spec"]["resources"].update(
        gpusPerNode=1, requests={"cpu": "1", "memory": "1Gi"}, sharedMemorySize="1Gi"
    )
    body["spec"]["scheduling"]["nodeSelector"] = {"nvidia.com/gpu.product": A100}
    create_run(api, namespace, body)
    return name


def train_jobs(api: client.ApiClient, namespace: str, run: str) -> list[Any]:
    selector = f"finetune.qwenft.io/name={run},{TRAIN}"
    jobs: list[Any] = (
        client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector).items
    )
    return jobs


def admit(
    api: client.ApiClient, namespace: str, run: str, seen: set[str]
) -> tuple[str, dict[int, Any]]:
    """As Kueue: the run's new (suspended) Job keeps its pods running and is let go.

    Returns the Job's UID and its two running pods by rank; ``seen`` holds the UIDs of the
    run's earlier Jobs (a new one must have another).
    """
    batch = client.BatchV1Api(api)

    def new_job() -> Any:
        jobs = train_jobs(api, namespace, run)
        assert len(jobs) <= 1, "two training Jobs at once"
        fresh = [j for j in jobs if j.metadata.uid not in seen and j.spec.suspend]
        return fresh[0] if fresh else None

    job = wait_until(f"a new queued training Job of {run}", new_job, timeout=60)
    uid: str = job.metadata.uid
    seen.add(uid)
    batch.patch_namespaced_job(
        job.metadata.name,
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {KWOK_AFTER: "10m"}}}}},
    )
    batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": False}})

    def running() -> dict[int, Any] | None:
        pods = [
            p
            for p in pods_of(api, namespace, run, "train")
            if p.metadata.labels.get("batch.kubernetes.io/controller-uid") == uid
            and p.status.phase == "Running"
        ]
        ranks = {
            int(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]): p for p in pods
        }
        return ranks if sorted(ranks) == [0, 1] else None

    return uid, wait_until(f"both ranks of {run} running", running, timeout=60)


def end_pod(
    api: client.ApiClient, namespace: str, pod: Any, *, code: int, disruption: str | None = None
) -> None:
    """Patch the pod's status as a kubelet leaves a container that exited ``code``."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now}
    ]
    if disruption is not None:
        conditions.append(
            {"type": "DisruptionTarget", "status": "True", "reason": disruption,
             "message": "preempted by a higher-priority pod", "lastTransitionTime": now}
        )  # fmt: skip
    terminated = {
        "exitCode": code, "reason": "Error", "message": "RuntimeError: boom",
        "startedAt": now, "finishedAt": now,
    }  # fmt: skip
    status = {
        "phase": "Failed",
        "conditions": conditions,
        "containerStatuses": [
            {"name": "trainer", "image": pod.spec.containers[0].image, "ready": False,
             "restartCount": 0, "state": {"terminated": terminated}},
        ],
    }  # fmt: skip
    client.CoreV1Api(api).patch_namespaced_pod_status(
        pod.metadata.name, namespace, {"status": status}
    )


def training(
    api: client.ApiClient, namespace: str, run: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    found = get_run(api, namespace, run)
    cond = condition(found, "Training") or {}
    return found.get("status") or {}, cond


def restart_warnings(api: client.ApiClient, namespace: str, run: str) -> list[Any]:
    events = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={run},involvedObject.kind=QwenFineTune"
        )
        .items
    )
    return [e for e in events if e.type == "Warning" and e.reason == "Restarting"]


def release(api: client.ApiClient, namespace: str, pod: str) -> None:
    try:
        client.CoreV1Api(api).patch_namespaced_pod(
            pod, namespace, {"metadata": {"finalizers": None}}
        )
    except ApiException as err:
        if err.status != 404:
            raise


def delete_and_wait(api: client.ApiClient, namespace: str, run: str) -> None:
    """Delete the run and wait until its training pods are gone (their GPUs free)."""
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, run
    )
    wait_until(
        f"{run}'s training pods to be gone",
        lambda: not pods_of(api, namespace, run, "train"),
        timeout=60,
    )


def test_a_failed_rank_restarts_the_whole_gang_once(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = queued_run(kube_client, namespace, "gang-fail", backoff_limit=2)
    seen: set[str] = set()
    first_uid, ranks = admit(kube_client, namespace, run, seen)
    wait_until(
        "the run to train on both ranks",
        lambda: training(kube_client, namespace, run)[1].get("reason") == "TrainingRunning",
        timeout=30,
    )
    held = ranks[0].metadata.name
    client.CoreV1Api(kube_client).patch_namespaced_pod(
        held, namespace, {"metadata": {"finalizers": [HOLD]}}
    )
    try:
        end_pod(kube_client, namespace, ranks[1], code=1)

        def restarting() -> tuple[dict[str, Any], dict[str, Any]] | None:
            status, cond = training(kube_client, namespace, run)
            waiting = cond.get("reason") == "Restarting" and held in cond.get("message", "")
            return (status, cond) if status.get("restarts") == 1 and waiting else None

        status, cond = wait_until(
            "the restart to be recorded and to wait for the held pod", restarting, timeout=60
        )
        assert status["phase"] == "Training"
        last = status["lastRestart"]
        assert (last["cause"], last["rank"], last["jobUid"]) == ("Failure", 1, first_uid)
        assert "code 1" in last["message"] and "disruptionRestarts" not in status
        assert "rank 1" in cond["message"]
        warned = wait_until(
            "one Restarting Warning Event",
            lambda: restart_warnings(kube_client, namespace, run),
            timeout=30,
        )
        assert "rank 1" in warned[0].message and "code 1" in warned[0].message
        # the old Job can't go while its pod is held: it is the only training Job
        (job,) = train_jobs(kube_client, namespace, run)
        assert job.metadata.uid == first_uid and job.metadata.deletion_timestamp is not None
    finally:
        release(kube_client, namespace, held)

    second_uid, _ = admit(kube_client, namespace, run, seen)
    assert second_uid != first_uid
    wait_until(
        "the new gang to train",
        lambda: training(kube_client, namespace, run)[1].get("reason") == "TrainingRunning",
        timeout=30,
    )
    status, _ = training(kube_client, namespace, run)
    assert status["restarts"] == 1 and status["lastRestart"]["jobUid"] == first_uid
    assert len(restart_warnings(kube_client, namespace, run)) == 1
    (job,) = train_jobs(kube_client, namespace, run)
    assert job.metadata.uid == second_uid
    delete_and_wait(kube_client, namespace, run)


def test_disruptions_do_not_count_and_failures_beyond_the_limit_fail(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = queued_run(kube_client, namespace, "gang-limit", backoff_limit=0)
    seen: set[str] = set()
    first_uid, ranks = admit(kube_client, namespace, run, seen)
    end_pod(kube_client, namespace, ranks[1], code=137, disruption="PreemptionByScheduler")

    def disrupted() -> dict[str, Any] | None:
        status, _ = training(kube_client, namespace, run)
        return status if status.get("disruptionRestarts") == 1 else None

    status = wait_until("a disruption restart", disrupted, timeout=60)
    assert status["restarts"] == 1 and status["lastRestart"]["cause"] == "Disruption"
    assert status["lastRestart"]["jobUid"] == first_uid
    assert status["phase"] == "Training"

    _, ranks = admit(kube_client, namespace, run, seen)
    status, _ = training(kube_client, namespace, run)
    assert status["phase"] == "Training" and status["restarts"] == 1
    end_pod(kube_client, namespace, ranks[1], code=1)
    failed = wait_phase(kube_client, namespace, run, "Failed", timeout=60)
    reason = condition(failed, "Failed")
    assert reason is not None and reason["reason"] == "BackoffLimitExceeded", reason
    assert reason["message"].startswith("1 rank failure(s), backoffLimit 0; last rank 1"), reason
    assert failed["status"]["restarts"] == 1
    delete_and_wait(kube_client, namespace, run)
