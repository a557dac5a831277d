"""Outages under running QwenFineTunes: each run still gets Ready, with one child of each kind.

The module starts a control plane of its own (its ``cluster`` fixture shadows the session's):
these tests kill, freeze and delete parts of it, and a recovery that fails, which is what
they look for, must not take the other e2e tests down with it. Every component a test
stops is started again in a ``finally``. Each run is the lora-single-gpu example (its smoke
test left out: the flow tests cover it); its training pod is kept running by kwok for a
while (annotation ``qwenft.io/kwok-complete-after``) so that the fault lands in Training.
Covers:
- kube-apiserver killed (SIGKILL) while the run trains, started again ~20 s later with the
  same flags; the training pod's end falls inside the outage;
- etcd frozen (SIGSTOP) for ~20 s while the run trains, then thawed (SIGCONT);
- kube-controller-manager restarted while the run trains (the Job controller sees the pod
  end only after it is back);
- the kwok node running the training pod deleted: the pod garbage collector fails the pod
  (condition DisruptionTarget, which the Job's podFailurePolicy ignores), the Job makes a new
  pod, and the scheduler puts it on another node;
- a burst of 12 runs with the operator killed (SIGKILL) twice: once as the first run
  trains, while the second half of the burst is created, and once as the first of that
  half validates;
and after each, the run(s) reach Ready with exactly the expected Jobs, ConfigMap, Service and
Deployment, one ReplicaSet and one pod per Job and for the server (none made twice).

    python -m pytest tests/e2e/test_chaos.py -m chaos
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from devcluster import BinariesMissingError, ClusterError, ControlPlane, processes
from devcluster.nodes import build_nodes
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from operatorkit import (
    KWOK_COMPLETE_AFTER,
    OperatorProcess,
    children,
    condition,
    create_run,
    ensure_priority_classes,
    example,
    fresh_namespace,
    get_run,
    install_crd,
    patch_run,
    phase_of,
    prepare_namespace,
    running_operator,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]
OUTAGE_SECONDS = 20.0  # how long the API server is down, or etcd frozen: the fault under test
BURST = 12
COMPONENTS = ("validate", "train", "merge", "serve")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane for this module alone (the conftest hook shows its logs on failure)."""
    error = ""
    try:
        cp = ControlPlane.start(tmp_path_factory.mktemp("chaos-cluster"), owner_pid=os.getpid())
    except BinariesMissingError as err:
        error = str(err)
    except ClusterError as err:
        error = f"the local control plane did not come up: {err}"
    if error:
        pytest.fail(error, pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def api(cluster: ControlPlane) -> Iterator[client.ApiClient]:
    kube = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    install_crd(kube)
    ensure_priority_classes(kube)
    yield kube
    kube.close()


@pytest.fixture(scope="module")
def operator(
    cluster: ControlPlane, api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator")) as proc:
        yield proc


@pytest.fixture
def namespace(api: client.ApiClient, operator: OperatorProcess) -> Iterator[str]:
    with fresh_namespace(api) as name:
        prepare_namespace(api, name)
        yield name


@pytest.fixture
def healed(cluster: ControlPlane) -> Iterator[ControlPlane]:
    """The cluster, with every component running and unfrozen again after the test.

    Tests ask for it last, so it heals the cluster before their namespace is deleted.
    """
    try:
        yield cluster
    finally:
        for proc in list(cluster.processes):
            if proc.name == "watchdog":
                continue
            if processes.paused(proc):
                cluster.resume(proc.name)
            elif not processes.alive(proc):
                cluster.start_component(proc.name)
        for proc in cluster.processes:
            if proc.name != "watchdog":
                cluster.wait_ready(proc.name, timeout=120)


def lora_run(name: str = "support-lora") -> dict[str, Any]:
    body = example("lora-single-gpu")
    body["metadata"]["name"] = name
    body["spec"].pop("evaluationPrompts")
    return body


def pods(api: client.ApiClient, namespace: str, run: str, component: str) -> list[Any]:
    selector = f"finetune.qwenft.io/name={run},finetune.qwenft.io/component={component}"
    found: list[Any] = (
        client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    )
    return found


def start_training(api: client.ApiClient, namespace: str, *, pod_runs_for: str) -> tuple[str, Any]:
    """A run whose training pod kwok keeps Running for ``pod_runs_for`` (a Go duration).

    Created suspended, so its (never started) Job's pod template can be annotated, then
    resumed; returns the run's name and its Running training pod once the run reports it.
    """
    body = lora_run()
    run: str = body["metadata"]["name"]
    body["spec"]["suspend"] = True
    create_run(api, namespace, body)
    wait_phase(api, namespace, run, "Suspended", timeout=60)
    client.BatchV1Api(api).patch_namespaced_job(
        f"{run}-train",
        namespace,
        {"spec": {"template": {"metadata": {"annotations": {KWOK_COMPLETE_AFTER: pod_runs_for}}}}},
    )
    patch_run(api, namespace, run, {"spec": {"suspend": False}})

    def training_pod() -> Any:
        found = condition(get_run(api, namespace, run), "Training")
        running = [p for p in pods(api, namespace, run, "train") if p.status.phase == "Running"]
        return running[0] if found and found["reason"] == "TrainingRunning" and running else None

    pod = wait_until(f"{run}'s training pod to run", training_pod, timeout=60)
    return run, pod


def assert_one_child_of_each_kind(
    api: client.ApiClient, namespace: str, run: str, *, lost_with_node: tuple[str, ...] = ()
) -> None:
    """The run's children, found by its label, are exactly one of each (single node, merged),
    and so are the pods of each component (at most one for those in ``lost_with_node``)."""
    assert children(api, namespace, run) == {
        "Job": [f"{run}-merge", f"{run}-train", f"{run}-validate"],
        "ConfigMap": [f"{run}-config"],
        "Service": [f"{run}-serve"],  # one node: no rendezvous Service
        "Deployment": [f"{run}-serve"],
    }
    selector = f"finetune.qwenft.io/name={run}"
    replica_sets = client.AppsV1Api(api).list_namespaced_replica_set(
        namespace, label_selector=selector
    )
    assert len(replica_sets.items) == 1, [r.metadata.name for r in replica_sets.items]
    for component in COMPONENTS:
        names = [p.metadata.name for p in pods(api, namespace, run, component)]
        expected = (0, 1) if component in lost_with_node else (1,)
        assert len(names) in expected, (component, names)


def assert_operator_unharmed(operator: OperatorProcess) -> None:
    """Still running, and no handler failed with a traceback (API errors are retried quietly)."""
    assert operator.healthy()
    logs = operator.logs()
    assert "Traceback" not in logs, logs


def test_api_server_killed_during_training(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, healed: ControlPlane
) -> None:
    run, _ = start_training(api, namespace, pod_runs_for="8s")
    healed.kill("kube-apiserver")
    try:
        time.sleep(OUTAGE_SECONDS)  # the outage under test; the pod's 8 s end inside it
    finally:
        healed.start_component("kube-apiserver")
    # the Job controller's own watches come back after their backoff (40 s of it, seen here)
    wait_phase(api, namespace, run, "Ready", timeout=180)
    assert_one_child_of_each_kind(api, namespace, run)
    assert_operator_unharmed(operator)


def test_etcd_frozen_during_training(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, healed: ControlPlane
) -> None:
    run, _ = start_training(api, namespace, pod_runs_for="8s")
    healed.pause("etcd")
    try:
        time.sleep(OUTAGE_SECONDS)  # the outage under test
    finally:
        healed.resume("etcd")
    healed.wait_ready("kube-apiserver", timeout=60)
    wait_phase(api, namespace, run, "Ready", timeout=180)
    assert_one_child_of_each_kind(api, namespace, run)
    assert_operator_unharmed(operator)


def test_controller_manager_restarted_during_training(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, healed: ControlPlane
) -> None:
    run, pod = start_training(api, namespace, pod_runs_for="4s")
    healed.restart("kube-controller-manager")
    wait_phase(api, namespace, run, "Ready", timeout=120)
    assert_one_child_of_each_kind(api, namespace, run)
    [train] = pods(api, namespace, run, "train")
    assert train.metadata.uid == pod.metadata.uid  # the same pod ran to its end
    assert_operator_unharmed(operator)


@contextlib.contextmanager
def node_restored(api: client.ApiClient, name: str) -> Iterator[None]:
    """Create the fake node ``name`` again afterwards, as devcluster made it, and wait for Ready."""
    core = client.CoreV1Api(api)
    try:
        yield
    finally:
        [node] = [n for n in build_nodes() if n["metadata"]["name"] == name]

        def recreated() -> bool:
            with contextlib.suppress(ApiException):
                core.create_node(node)  # 409 while the old one is still going
            found = core.read_node(name)
            return any(
                c.type == "Ready" and c.status == "True" for c in found.status.conditions or []
            )

        wait_until(f"node {name} to be back and Ready", recreated, timeout=60)


def test_training_node_deleted(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, healed: ControlPlane
) -> None:
    # kwok would still end the pod of a deleted node on time; a dead node's pod never ends
    run, pod = start_training(api, namespace, pod_runs_for="1h")
    lost = pod.spec.node_name
    assert lost and lost.startswith("gpu-node-")
    core = client.CoreV1Api(api)
    with node_restored(api, lost):
        core.delete_node(lost)

        def moved() -> Any:
            running = [
                p
                for p in pods(api, namespace, run, "train")
                if p.metadata.uid != pod.metadata.uid and p.status.phase == "Running"
            ]
            return running[0] if running else None

        # the pod garbage collector fails a pod whose node is gone after a 40 s quarantine,
        # checking every 20 s; the Job's podFailurePolicy ignores it (DisruptionTarget)
        replacement = wait_until("a new training pod on another node", moved, timeout=150)
        assert replacement.spec.node_name not in (None, lost)
        # the new pod's training ends
        core.patch_namespaced_pod(
            replacement.metadata.name,
            namespace,
            {"metadata": {"annotations": {KWOK_COMPLETE_AFTER: "1s"}}},
        )
        ready = wait_phase(api, namespace, run, "Ready", timeout=120)
    # the validation pod, if it ran on the lost node, went with it
    assert_one_child_of_each_kind(api, namespace, run, lost_with_node=("validate",))
    [train] = pods(api, namespace, run, "train")
    assert train.metadata.uid == replacement.metadata.uid and train.status.phase == "Succeeded"
    trained = condition(ready, "Trained")
    assert trained is not None and trained["status"] == "True", ready["status"]["conditions"]
    job = client.BatchV1Api(api).read_namespaced_job(f"{run}-train", namespace)
    assert not job.status.failed, job.status  # the lost pod is not counted as a failure
    assert_operator_unharmed(operator)


def test_burst_with_the_operator_killed_twice(
    api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"burst-{i:02d}" for i in range(BURST)]
    first, second = names[: BURST // 2], names[BURST // 2 :]
    for name in first:
        create_run(api, namespace, lora_run(name))
    # Each kill lands mid-burst by construction: the first while a run of the first half
    # trains and the second half isn't created yet, the second while a run of the second
    # half has only just got a phase.
    wait_until(
        "a run of the first half to train",
        lambda: any(phase_of(api, namespace, name) == "Training" for name in first),
        timeout=120,
        why=operator.logs,
    )
    operator.kill()
    for name in second:  # while the operator is down
        create_run(api, namespace, lora_run(name))
    operator.start()
    wait_until(
        "a run of the second half to get a phase",
        lambda: any(phase_of(api, namespace, name) for name in second),
        timeout=120,
        why=operator.logs,
    )
    operator.kill()
    operator.start()
    for name in names:
        wait_phase(api, namespace, name, "Ready", timeout=240)
    for name in names:
        assert_one_child_of_each_kind(api, namespace, name)
    assert_operator_unharmed(operator)
