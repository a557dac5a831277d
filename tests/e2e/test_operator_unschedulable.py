"""The operator on the real control plane: runs whose pods no node fits say why, then fail.

The real kube-scheduler places the pods on kwok's fake nodes (4 GPU nodes with 8
nvidia.com/gpu each, two of them H100, and a CPU node). Covers:
- a run asking 16 GPUs per node: its Training condition turns PodsUnschedulable with the
  scheduler's message (Insufficient nvidia.com/gpu) and a Warning Event says the same,
  within seconds; with runPolicy.schedulingTimeoutSeconds 10 the run fails with reason
  Unschedulable, a Warning Event, and its training Job deleted;
- a nodeSelector no node matches: validation (a CPU pod, placed without the GPU node
  selector) still passes, and training reports the selector mismatch;
- a gang of 3 where only the 2 H100 nodes fit: named as "2 of 3 training pods
  scheduled; 1 unschedulable", and after the timeout the Job goes and with it the pods
  that held 16 GPUs.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from kubernetes import client
from operatorkit import (
    condition,
    create_run,
    example,
    get_run,
    own_gpu_nodes,
    patch_run,
    pods_of,
    wait_phase,
    wait_until,
    warning_with,
)

pytestmark = pytest.mark.e2e
KWOK_AFTER = "qwenft.io/kwok-complete-after"  # how long kwok keeps a Job pod running
INSUFFICIENT_GPUS = "Insufficient nvidia.com/gpu"
SELECTOR_MISMATCH = "didn't match Pod's node affinity/selector"


def named(body: dict[str, Any], name: str) -> dict[str, Any]:
    body["metadata"]["name"] = name
    return body


GANG = re.compile(
    r"(?P<scheduled>\d) of 3 training pods scheduled; (?P<unschedulable>\d) unschedulable: "
)


def wait_condition(
    api: client.ApiClient,
    namespace: str,
    run: str,
    type_: str,
    reason: str,
    timeout: float,
    starts: str = "",
) -> dict[str, Any]:
    """The run's condition ``type_`` once it has ``reason`` and a message starting so."""

    def reached() -> dict[str, Any] | None:
        found = condition(get_run(api, namespace, run), type_)
        if found is None or found["reason"] != reason:
            return None
        return found if found["message"].startswith(starts) else None

    return wait_until(
        f"{run}'s {type_} condition to say {reason} {starts!r}", reached, timeout=timeout
    )


def train_job_exists(api: client.ApiClient, namespace: str, run: str) -> bool:
    jobs = client.BatchV1Api(api).list_namespaced_job(
        namespace,
        label_selector=f"finetune.qwenft.io/name={run},finetune.qwenft.io/component=train",
    )
    return bool(jobs.items)


def test_too_many_gpus_is_reported_then_fails_at_the_timeout(
    kube_client: client.ApiClient, namespace: str
) -> None:
    wide = named(example("lora-single-gpu", resources={"gpusPerNode": 16}), "wide")
    short = named(
        example(
            "lora-single-gpu",
            resources={"gpusPerNode": 16},
            runPolicy={"schedulingTimeoutSeconds": 10},
        ),
        "wide-short",
    )
    create_run(kube_client, namespace, wide)
    create_run(kube_client, namespace, short)

    training = wait_condition(kube_client, namespace, "wide", "Training", "PodsUnschedulable", 60)
    assert training["message"].startswith("training pod unschedulable: 0/")
    assert INSUFFICIENT_GPUS in training["message"]
    assert "runPolicy.schedulingTimeoutSeconds" in training["message"]
    wait_until(
        "a PodsUnschedulable Warning Event with the scheduler's message",
        lambda: warning_with(
            kube_client, namespace, "wide", "PodsUnschedulable", INSUFFICIENT_GPUS
        ),
        timeout=15,
    )
    assert get_run(kube_client, namespace, "wide")["status"]["phase"] == "Training"

    failed = wait_phase(kube_client, namespace, "wide-short", "Failed", timeout=60)
    reason = condition(failed, "Failed")
    assert reason is not None and reason["reason"] == "Unschedulable", reason
    assert INSUFFICIENT_GPUS in reason["message"] and "for 10s" in reason["message"]
    trained = condition(failed, "Training")
    assert trained is not None and (trained["status"], trained["reason"]) == (
        "False",
        "Unschedulable",
    )
    wait_until(
        "an Unschedulable Warning Event",
        lambda: warning_with(kube_client, namespace, "wide-short", "Unschedulable", "for 10s"),
        timeout=15,
    )
    wait_until(
        "the stuck training Job to be deleted",
        lambda: not train_job_exists(kube_client, namespace, "wide-short"),
        timeout=30,
    )
    # The other run, with the default timeout, still waits.
    assert get_run(kube_client, namespace, "wide")["status"]["phase"] == "Training"


def test_node_selector_typo_blocks_training_not_validation(
    kube_client: client.ApiClient, namespace: str
) -> None:
    typo = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM"}}
    create_run(kube_client, namespace, named(example("lora-single-gpu", scheduling=typo), "typo"))
    training = wait_condition(kube_client, namespace, "typo", "Training", "PodsUnschedulable", 60)
    assert SELECTOR_MISMATCH in training["message"]
    found = get_run(kube_client, namespace, "typo")
    validated = condition(found, "Validated")
    assert validated is not None and validated["status"] == "True", validated
    (validator,) = pods_of(kube_client, namespace, "typo", "validate")
    assert validator.status.phase == "Succeeded"
    assert not validator.spec.node_selector
    wait_until(
        "a PodsUnschedulable Warning Event naming the selector",
        lambda: warning_with(
            kube_client, namespace, "typo", "PodsUnschedulable", SELECTOR_MISMATCH
        ),
        timeout=15,
    )


def test_partly_scheduled_gang_is_named_and_releases_its_gpus(
    kube_client: client.ApiClient, namespace: str
) -> None:
    """3 ranks of 8 GPUs on a pool of 2 nodes with 8 GPUs each: two ranks hold GPUs and wait."""
    with own_gpu_nodes(kube_client, count=2) as pool:
        check_partly_scheduled_gang(kube_client, namespace, pool)


def check_partly_scheduled_gang(
    kube_client: client.ApiClient, namespace: str, pool: dict[str, str]
) -> None:
    run = "gang"
    body = named(
        example(
            "qlora-multinode-zero2",
            resources={"nodes": 3, "gpusPerNode": 8},
            runPolicy={"schedulingTimeoutSeconds": 15},
            suspend=True,
        ),
        run,
    )
    body["spec"]["scheduling"]["nodeSelector"] = pool
    create_run(kube_client, namespace, body)
    wait_phase(kube_client, namespace, run, "Suspended", timeout=60)
    # Keep scheduled ranks running (kwok would end them after a second and free a node).
    client.BatchV1Api(kube_client).patch_namespaced_job(
        f"{run}-train",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {KWOK_AFTER: "10m"}}}}},
    )
    patch_run(kube_client, namespace, run, {"spec": {"suspend": False}})

    # The pool's two nodes fit one rank each; the third rank has nowhere to go.
    def partial_gang() -> dict[str, Any] | None:
        found = condition(get_run(kube_client, namespace, run), "Training")
        if found is None or found["reason"] != "PodsUnschedulable":
            return None
        match = GANG.match(found["message"])
        placed = [p for p in pods_of(kube_client, namespace, run, "train") if p.spec.node_name]
        return found if match and int(match["scheduled"]) == len(placed) == 2 else None

    training = wait_until("the gang to be named partly scheduled", partial_gang, timeout=60)
    assert INSUFFICIENT_GPUS in training["message"]
    placed = [p for p in pods_of(kube_client, namespace, run, "train") if p.spec.node_name]
    assert all(p.spec.node_name.startswith("pool-") for p in placed), placed
    gang = GANG.match(training["message"])
    assert gang is not None and int(gang["scheduled"]) + int(gang["unschedulable"]) == 3

    failed = wait_phase(kube_client, namespace, run, "Failed", timeout=60)
    reason = condition(failed, "Failed")
    assert reason is not None and reason["reason"] == "Unschedulable", reason
    assert GANG.match(reason["message"]), reason
    wait_until(
        "the gang's Job and pods to be gone (their GPUs released)",
        lambda: (
            not train_job_exists(kube_client, namespace, run)
            and not pods_of(kube_client, namespace, run, "train")
        ),
        timeout=60,
    )
