"""References checked when they are used, on the real control plane.

The operator runs as a subprocess against the local API server; kwok runs the pods. Covers:
- the dataset ConfigMap deleted while the validation pod waits for a node: ResolvedRefs
  turns False naming it; once validation has passed no training Job is created, the run
  waits with Training MissingReference naming the ConfigMap, its key, its spec field and
  the Job, with a Warning Event; the ConfigMap created again, the training Job follows
  within seconds (the ConfigMap watch wakes the run);
- a token Secret created after the run was applied: the run waits (Pending, Validated
  MissingReference naming the Secret) and, once the Secret exists, its validation Job is
  created within a few seconds (well under the 30 s of a fixed poll);
- the dataset ConfigMap deleted while the training pod runs: ResolvedRefs False names it
  and the training Job within seconds, with a Warning Event, while the Training condition
  still says TrainingRunning; recreated, ResolvedRefs turns True (ReferencesFound).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import (
    CONFIG_MAPS,
    condition,
    create_run,
    example,
    get_run,
    patch_run,
    wait_phase,
    wait_until,
    warning_with,
)

pytestmark = pytest.mark.e2e
DATASET = "support-chats"
DATASET_REF = "configmap support-chats (key train.jsonl) for spec.dataset.configMap"
KWOK_AFTER = "qwenft.io/kwok-complete-after"
CPU_NODE = "cpu-node-0"
# How soon a change of a reference must show on the run (the operator sees ConfigMaps
# through a watch, Secrets by looking again after 1-5 s).
NOTICED_WITHIN = 10.0


def condition_with(
    api: client.ApiClient, namespace: str, run: str, type_: str, reason: str, text: str = ""
) -> dict[str, Any] | None:
    found = condition(get_run(api, namespace, run), type_)
    if found is not None and found["reason"] == reason and text in found["message"]:
        return found
    return None


def job_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        client.BatchV1Api(api).read_namespaced_job(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def delete_dataset(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).delete_namespaced_config_map(DATASET, namespace)


def create_dataset(api: client.ApiClient, namespace: str) -> None:
    body = {"metadata": {"name": DATASET}, "data": CONFIG_MAPS[DATASET]}
    client.CoreV1Api(api).create_namespaced_config_map(namespace, body)


@pytest.fixture
def validation_node(kube_client: client.ApiClient, namespace: str) -> Iterator[dict[str, str]]:
    """A node selector that no node matches until the test labels the CPU node."""
    selector = {"qwenft.io/e2e-validation": namespace}
    yield selector
    label = {"metadata": {"labels": dict.fromkeys(selector)}}
    client.CoreV1Api(kube_client).patch_node(CPU_NODE, label)


def test_dataset_deleted_after_validation_started_holds_the_training_job(
    kube_client: client.ApiClient, namespace: str, validation_node: dict[str, str]
) -> None:
    run = "support-lora"
    create_run(
        kube_client,
        namespace,
        example("lora-single-gpu", validation={"nodeSelector": validation_node}),
    )
    wait_phase(kube_client, namespace, run, "Validating", timeout=30)
    delete_dataset(kube_client, namespace)
    # The validation Job runs (its pod waits for a node) and mounts the ConfigMap.
    wait_until(
        "ResolvedRefs to name the deleted ConfigMap under the validation Job",
        lambda: condition_with(
            kube_client, namespace, run, "ResolvedRefs", "MissingReference",
            f"{DATASET_REF}, used by Job {run}-validate",
        ),
        timeout=NOTICED_WITHIN,
    )  # fmt: skip
    client.CoreV1Api(kube_client).patch_node(CPU_NODE, {"metadata": {"labels": validation_node}})
    waiting = wait_until(
        "the run to wait for the dataset before training",
        lambda: condition_with(
            kube_client, namespace, run, "Training", "MissingReference", DATASET_REF
        ),
        timeout=60,
    )
    assert f"in namespace {namespace} before creating Job {run}-train" in waiting["message"]
    assert "create it" in waiting["message"]
    found = get_run(kube_client, namespace, run)
    assert found["status"]["phase"] == "Training"
    validated = condition(found, "Validated")
    assert validated is not None and validated["status"] == "True"
    assert not job_exists(kube_client, namespace, f"{run}-train")
    wait_until(
        "a MissingReference Warning Event naming the dataset",
        lambda: warning_with(kube_client, namespace, run, "MissingReference", DATASET_REF),
        timeout=30,
    )
    create_dataset(kube_client, namespace)
    wait_until(
        "the training Job once the dataset is back",
        lambda: job_exists(kube_client, namespace, f"{run}-train"),
        timeout=NOTICED_WITHIN,
    )
    wait_until(
        "ResolvedRefs True once the dataset is back",
        lambda: condition_with(kube_client, namespace, run, "ResolvedRefs", "ReferencesFound"),
        timeout=NOTICED_WITHIN,
    )


def test_a_token_secret_created_after_the_run_is_noticed_within_seconds(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = "support-lora"
    body = example("lora-single-gpu")
    body["spec"]["model"]["hub"]["tokenSecretRef"] = {"name": "late-token", "key": "token"}
    create_run(kube_client, namespace, body)
    wait_until(
        "the run to wait for the Secret",
        lambda: condition_with(
            kube_client, namespace, run, "Validated", "MissingReference",
            "secret late-token for spec.model.hub.tokenSecretRef",
        ),
        timeout=30,
    )  # fmt: skip
    assert get_run(kube_client, namespace, run)["status"]["phase"] == "Pending"
    assert not job_exists(kube_client, namespace, f"{run}-validate")
    # The Secret appears a while later, as when a user applies the run first: the operator
    # looks for it again on its own (no watch of Secrets tells it).
    time.sleep(12)
    client.CoreV1Api(kube_client).create_namespaced_secret(
        namespace, {"metadata": {"name": "late-token"}, "stringData": {"token": "hf_x"}}
    )
    created = time.monotonic()
    wait_until(
        "the validation Job once the Secret exists",
        lambda: job_exists(kube_client, namespace, f"{run}-validate"),
        timeout=NOTICED_WITHIN,
    )
    noticed = time.monotonic() - created
    assert noticed < NOTICED_WITHIN, noticed


def test_dataset_deleted_under_the_running_training_pod_is_reported(
    kube_client: client.ApiClient, namespace: str
) -> None:
    run = "support-lora"
    body = example("lora-single-gpu", suspend=True)
    create_run(kube_client, namespace, body)
    wait_phase(kube_client, namespace, run, "Suspended", timeout=30)
    client.BatchV1Api(kube_client).patch_namespaced_job(
        f"{run}-train",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {KWOK_AFTER: "300s"}}}}},
    )
    patch_run(kube_client, namespace, run, {"spec": {"suspend": False}})
    wait_until(
        "the training pod to run",
        lambda: condition_with(kube_client, namespace, run, "Training", "TrainingRunning"),
        timeout=30,
    )
    delete_dataset(kube_client, namespace)
    reported = wait_until(
        "ResolvedRefs to name the deleted dataset under the training Job",
        lambda: condition_with(
            kube_client, namespace, run, "ResolvedRefs", "MissingReference",
            f"{DATASET_REF}, used by Job {run}-train",
        ),
        timeout=NOTICED_WITHIN,
    )  # fmt: skip
    assert reported["status"] == "False"
    assert f"in namespace {namespace}" in reported["message"]
    training = condition(get_run(kube_client, namespace, run), "Training")
    assert training is not None and training["reason"] == "TrainingRunning"
    wait_until(
        "a MissingReference Warning Event naming the dataset",
        lambda: warning_with(
            kube_client, namespace, run, "MissingReference", f"used by Job {run}-train"
        ),
        timeout=30,
    )
    create_dataset(kube_client, namespace)
    wait_until(
        "ResolvedRefs True once the dataset is back",
        lambda: condition_with(kube_client, namespace, run, "ResolvedRefs", "ReferencesFound"),
        timeout=NOTICED_WITHIN,
    )
