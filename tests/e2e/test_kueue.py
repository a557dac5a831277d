"""Queued runs under a real Kueue: quota admits, holds and releases training Jobs.

This module starts its own control plane with Kueue's manager (hack/devcluster/kueue.py,
built by `bash hack/build-cluster.sh kueue` when missing), so the other e2e tests never pay
for it. The operator runs as in the other e2e tests. Each test gets a ClusterQueue with
8 nvidia.com/gpu of quota and a LocalQueue `team-a`; runs use `examples/kueue-queued.yaml`.

kwok completes a Job pod after its `qwenft.io/kwok-complete-after` annotation; the Jobs are
created while their ClusterQueue is held (stopPolicy Hold), annotated with a long delay,
then released, so an admitted run trains until the test finishes it by setting the delay of
its running pods to 0s. Covers:
- two 4-GPU runs admitted, a third held: its Job stays suspended with no pods, and the run
  shows Training=False reason Queued with Kueue's own message from the Workload
  (insufficient quota for nvidia.com/gpu); when one run finishes, the third is admitted and
  trains, and the finished run goes on to Ready;
- a 2-node x 4-GPU run while 4 of the 8 GPUs are taken: held whole (no pod at all, never
  one of two), then admitted whole (both ranks at once) when the GPUs free up.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster import BinariesMissingError, ClusterError, ControlPlane, kueue
from kubernetes import client, config
from operatorkit import (
    OperatorProcess,
    condition,
    create_run,
    ensure_priority_classes,
    example,
    get_run,
    install_crd,
    pods_of,
    prepare_namespace,
    running_operator,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kueue]
ROOT = Path(__file__).resolve().parents[2]
KWOK_AFTER = "qwenft.io/kwok-complete-after"
QUEUE = "team-a"  # the LocalQueue examples/kueue-queued.yaml names
FLAVOR = "default-flavor"
QUOTA_GPUS = 8
GROUP, VERSION = kueue.GROUP, "v1beta2"


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own with Kueue's manager (built first if it is not cached)."""
    build = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-cluster.sh"), "kueue"],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.fail(f"building Kueue failed:\n{build.stderr[-4000:]}", pytrace=False)
    error = ""
    try:
        cp = ControlPlane.start(
            tmp_path_factory.mktemp("kueue-cluster"), owner_pid=os.getpid(), with_kueue=True
        )
    except (BinariesMissingError, ClusterError) as err:
        error = f"the control plane with Kueue did not come up: {err}"
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def api(kueue_cluster: ControlPlane) -> Iterator[client.ApiClient]:
    found = config.new_client_from_config(config_file=str(kueue_cluster.kubeconfig))
    custom = client.CustomObjectsApi(found)
    custom.create_cluster_custom_object(
        GROUP, VERSION, "resourceflavors", kueue.build_resource_flavor(FLAVOR)
    )
    yield found
    found.close()


@pytest.fixture(scope="module")
def operator(
    api: client.ApiClient, kueue_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crd(api)
    ensure_priority_classes(api)
    with running_operator(kueue_cluster.kubeconfig, tmp_path_factory.mktemp("operator")) as proc:
        yield proc


@pytest.fixture
def queue(api: client.ApiClient, operator: OperatorProcess) -> Iterator[tuple[str, str]]:
    """(namespace, ClusterQueue): a prepared namespace whose LocalQueue team-a has 8 GPUs."""
    core = client.CoreV1Api(api)
    namespace = f"kueue-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until(
        "the namespace's default service account",
        lambda: core.read_namespaced_service_account("default", namespace),
        timeout=30,
    )
    prepare_namespace(api, namespace)
    cluster_queue = f"cq-{namespace}"
    custom = client.CustomObjectsApi(api)
    body = kueue.build_cluster_queue(cluster_queue, flavor=FLAVOR, gpus=QUOTA_GPUS)
    custom.create_cluster_custom_object(GROUP, VERSION, "clusterqueues", body)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "localqueues",
        kueue.build_local_queue(namespace, QUEUE, cluster_queue),
    )
    yield namespace, cluster_queue
    core.delete_namespace(namespace)
    custom.delete_cluster_custom_object(GROUP, VERSION, "clusterqueues", cluster_queue)


# ---- helpers ---------------------------------------------------------------------------
def set_stop_policy(api: client.ApiClient, cluster_queue: str, policy: str) -> None:
    client.CustomObjectsApi(api).patch_cluster_custom_object(
        GROUP, VERSION, "clusterqueues", cluster_queue, {"spec": {"stopPolicy": policy}}
    )


def queued_run(name: str, *, nodes: int = 1, gpus: int = 4) -> dict[str, Any]:
    body = example("kueue-queued", resources={"nodes": nodes, "gpusPerNode": gpus})
    body["metadata"]["name"] = name
    return body


def train_job(api: client.ApiClient, namespace: str, run: str) -> Any:
    return client.BatchV1Api(api).read_namespaced_job(f"{run}-train", namespace)


def workload_of(api: client.ApiClient, namespace: str, run: str) -> dict[str, Any] | None:
    """The Workload Kueue made for the run's training Job."""
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloads"
    )
    for item in found["items"]:
        owners = item["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Job" and o["name"] == f"{run}-train" for o in owners):
            workload: dict[str, Any] = item
            return workload
    return None


def admitted(api: client.ApiClient, namespace: str, run: str) -> bool:
    workload = workload_of(api, namespace, run)
    conditions = (workload or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in conditions)


def start_held(
    api: client.ApiClient, namespace: str, cluster_queue: str, bodies: list[dict[str, Any]]
) -> list[str]:
    """Create the runs while the ClusterQueue is held, give their training pods a long life
    (kwok), then let Kueue admit what fits."""
    set_stop_policy(api, cluster_queue, "Hold")
    runs = [body["metadata"]["name"] for body in bodies]
    for body in bodies:
        create_run(api, namespace, body)
    batch = client.BatchV1Api(api)
    for run in runs:
        job = wait_until(f"{run}'s training Job", lambda r=run: train_job(api, namespace, r), 90)
        assert job.spec.suspend is True, f"{run}'s Job started before Kueue admitted it"
        assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == QUEUE
        patch = {"spec": {"template": {"metadata": {"annotations": {KWOK_AFTER: "1h"}}}}}
        batch.patch_namespaced_job(f"{run}-train", namespace, patch)
    set_stop_policy(api, cluster_queue, "None")
    return runs


def running_pods(api: client.ApiClient, namespace: str, run: str, count: int) -> list[Any]:
    """The run's training pods once `count` of them run on nodes, each with 4 GPUs."""

    def up() -> list[Any] | None:
        pods = pods_of(api, namespace, run, "train")
        running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return running if len(running) == count else None

    return wait_until(f"{count} running training pod(s) of {run}", up, timeout=90)


def finish(api: client.ApiClient, namespace: str, run: str) -> None:
    """Let kwok complete the run's running training pods now."""
    core = client.CoreV1Api(api)
    for pod in pods_of(api, namespace, run, "train"):
        patch = {"metadata": {"annotations": {KWOK_AFTER: "0s"}}}
        core.patch_namespaced_pod(pod.metadata.name, namespace, patch)


def gpus_of(pod: Any) -> int:
    return sum(int(c.resources.requests.get(kueue.GPU, 0)) for c in pod.spec.containers)


def kueue_pending_message(api: client.ApiClient, namespace: str, run: str) -> str | None:
    """Kueue's own words on why the run's Workload has no quota (QuotaReserved=False)."""
    workload = workload_of(api, namespace, run)
    for item in (workload or {}).get("status", {}).get("conditions") or []:
        if item["type"] == "QuotaReserved" and item["status"] == "False":
            message: str = item["message"]
            return message
    return None


def shows_kueues_reason(api: client.ApiClient, namespace: str, run: str) -> str | None:
    """The run's Queued message once it quotes Kueue's current insufficient-quota verdict."""
    verdict = kueue_pending_message(api, namespace, run)
    if verdict is None or "insufficient" not in verdict:
        return None
    training = condition(get_run(api, namespace, run), "Training")
    if training is None or (training["status"], training["reason"]) != ("False", "Queued"):
        return None
    message: str = training["message"]
    return message if message.endswith(f"Kueue: {verdict}") else None


# ---- tests -----------------------------------------------------------------------------
def test_quota_admits_two_runs_holds_the_third_until_one_finishes(
    api: client.ApiClient, queue: tuple[str, str]
) -> None:
    namespace, cluster_queue = queue
    runs = start_held(api, namespace, cluster_queue, [queued_run(f"q{i}") for i in range(3)])

    def split() -> tuple[list[str], list[str]] | None:
        going = [r for r in runs if admitted(api, namespace, r)]
        held = [r for r in runs if kueue_pending_message(api, namespace, r)]
        return (going, held) if len(going) == 2 and len(held) == 1 else None

    going, (waiting,) = wait_until("Kueue to admit two runs and hold one", split, timeout=90)
    for run in going:
        (pod,) = running_pods(api, namespace, run, 1)
        assert gpus_of(pod) == 4
    message = wait_until(
        f"{waiting} to show Kueue's reason",
        lambda: shows_kueues_reason(api, namespace, waiting),
        60,
    )
    assert message.startswith(f"waiting for Kueue to admit it (queue {QUEUE}); Kueue: ")
    assert kueue.GPU in message, message
    found = get_run(api, namespace, waiting)
    assert found["status"]["phase"] == "Training"
    assert train_job(api, namespace, waiting).spec.suspend is True
    assert pods_of(api, namespace, waiting, "train") == []
    assert not admitted(api, namespace, waiting)

    done = going[0]
    finish(api, namespace, done)
    wait_until(f"{waiting} to be admitted", lambda: admitted(api, namespace, waiting), 90)
    (pod,) = running_pods(api, namespace, waiting, 1)
    assert gpus_of(pod) == 4
    assert train_job(api, namespace, waiting).spec.suspend is False

    def trains() -> bool:
        training = condition(get_run(api, namespace, waiting), "Training")
        return training is not None and training["reason"] == "TrainingRunning"

    wait_until(f"{waiting} to report training", trains, timeout=60)
    wait_phase(api, namespace, done, "Ready", timeout=90)
    assert admitted(api, namespace, going[1]), "the other run lost its admission"


def test_multi_node_run_is_admitted_only_whole(
    api: client.ApiClient, queue: tuple[str, str]
) -> None:
    namespace, cluster_queue = queue
    (occupant,) = start_held(api, namespace, cluster_queue, [queued_run("half")])
    wait_until("the 4-GPU run's admission", lambda: admitted(api, namespace, occupant), 90)
    running_pods(api, namespace, occupant, 1)

    (wide,) = start_held(api, namespace, cluster_queue, [queued_run("wide", nodes=2)])
    wait_until(
        f"{wide} to show Kueue's reason", lambda: shows_kueues_reason(api, namespace, wide), 90
    )
    assert pods_of(api, namespace, wide, "train") == [], "a rank started without the whole gang"
    assert train_job(api, namespace, wide).spec.suspend is True

    finish(api, namespace, occupant)

    def whole() -> list[Any] | None:
        pods = pods_of(api, namespace, wide, "train")
        running = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return running if len(running) == 2 else None

    pods = wait_until(f"both ranks of {wide}", whole, timeout=90)
    assert sorted(gpus_of(p) for p in pods) == [4, 4]
    workload = workload_of(api, namespace, wide)
    assert workload is not None and admitted(api, namespace, wide)
    # One admission for the whole gang: one pod set of 2 pods holding all 8 GPUs.
    (pod_set,) = workload["status"]["admission"]["podSetAssignments"]
    assert pod_set["count"] == 2 and pod_set["resourceUsage"][kueue.GPU] == str(QUOTA_GPUS)


def test_kueue_webhooks_answer_at_127_0_0_1(api: client.ApiClient, queue: tuple[str, str]) -> None:
    """Kueue's mutating Job webhook suspends a queued Job created running, and its conversion
    webhook serves the older API version, both through the dev CA's certificate."""
    namespace, cluster_queue = queue
    job = {
        "metadata": {"name": "plain", "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
        "spec": {
            "suspend": False,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "resources": {"requests": {kueue.GPU: "1"}, "limits": {kueue.GPU: "1"}},
                        }
                    ],
                }
            },
        },
    }
    created = client.BatchV1Api(api).create_namespaced_job(namespace, job)
    assert created.spec.suspend is True  # set by Kueue's webhook before it was stored
    old = client.CustomObjectsApi(api).get_cluster_custom_object(
        GROUP, "v1beta1", "clusterqueues", cluster_queue
    )
    assert old["apiVersion"] == f"{GROUP}/v1beta1"
    assert old["spec"]["resourceGroups"][0]["flavors"][0]["name"] == FLAVOR
    wait_until("Kueue to admit the plain Job", lambda: admitted_job(api, namespace, "plain"), 60)


def admitted_job(api: client.ApiClient, namespace: str, name: str) -> bool:
    return client.BatchV1Api(api).read_namespaced_job(name, namespace).spec.suspend is False


def test_installed_webhooks_all_point_at_the_local_manager(
    api: client.ApiClient, kueue_cluster: ControlPlane
) -> None:
    """Every admission and conversion webhook of the release was rewritten to 127.0.0.1."""
    url = f"https://127.0.0.1:{kueue_cluster.ports['kueue_webhook']}/"
    admission = client.AdmissionregistrationV1Api(api)
    mutating = admission.read_mutating_webhook_configuration("kueue-mutating-webhook-configuration")
    validating = admission.read_validating_webhook_configuration(
        "kueue-validating-webhook-configuration"
    )
    hooks = [*mutating.webhooks, *validating.webhooks]
    assert any(h.client_config.url == f"{url}mutate-batch-v1-job" for h in hooks)
    for hook in hooks:
        assert hook.client_config.service is None and hook.client_config.url.startswith(url)
        assert hook.client_config.ca_bundle
    ext = client.ApiextensionsV1Api(api)
    converted = [
        crd.metadata.name
        for crd in ext.list_custom_resource_definition().items
        if crd.spec.group == GROUP and crd.spec.conversion.strategy == "Webhook"
    ]
    assert sorted(converted) == [
        f"{plural}.{GROUP}"
        for plural in ("clusterqueues", "cohorts", "localqueues", "multikueueclusters", "workloads")
    ]
    for name in converted:
        webhook = ext.read_custom_resource_definition(name).spec.conversion.webhook
        assert webhook.client_config.url == f"{url}convert"
