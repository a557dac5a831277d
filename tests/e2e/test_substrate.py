"""The local control plane itself: real API server, controllers and scheduler, kwok nodes.

Covers:
- the API server reports the Kubernetes version pinned in hack/versions.env;
- fake nodes: 4 GPU nodes (nvidia.com/gpu: 8, GPU product labels) and 1 CPU node are Ready
  and each has a Lease in kube-node-lease that kwok renews;
- an Indexed Job with 2 completions requesting nvidia.com/gpu is scheduled onto two GPU
  nodes, runs and succeeds;
- a pod asking for more GPUs than any node has stays Pending with a FailedScheduling event;
- a Deployment becomes Available;
- deleting an owner garbage-collects its children (ReplicaSet, pods, an owned ConfigMap);
- a CRD with a CEL validation rule rejects a bad object with the rule's message;
- the kwok failure annotation fails a Job with the chosen exit code and message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import wait_until

pytestmark = pytest.mark.e2e

GPU = "nvidia.com/gpu"


def condition(obj: Any, type_: str) -> Any:
    """The status condition of the given type, or None."""
    return next((c for c in (obj.status.conditions or []) if c.type == type_), None)


def is_true(obj: Any, type_: str) -> bool:
    """Whether the object has the condition with status True (absent counts as False)."""
    cond = condition(obj, type_)
    return bool(cond and cond.status == "True")


def container(name: str = "main", **resources: str) -> dict[str, Any]:
    res = {"requests": resources, "limits": resources} if resources else {}
    return {"name": name, "image": "registry.invalid/qwenft/fake:1", "resources": res}


def job(name: str, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    """A Job of one-GPU pods, one pod per node (as torchrun wants one rank group per node)."""
    one_per_node = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"batch.kubernetes.io/job-name": name}},
                }
            ]
        }
    }
    pod_spec = {
        "restartPolicy": "Never",
        "affinity": one_per_node,
        "containers": [container(**{GPU: "1"})],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {"metadata": {"annotations": annotations}, "spec": pod_spec},
        },
    }


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container()]}},
        },
    }


@pytest.fixture
def core(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


@pytest.fixture
def batch(kube_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube_client)


@pytest.fixture
def apps(kube_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube_client)


def test_api_server_reports_pinned_version(kube_client: client.ApiClient) -> None:
    from devcluster.binaries import read_versions

    info = client.VersionApi(kube_client).get_code()
    assert info.git_version == read_versions()["K8S_VERSION"]


def test_fake_nodes_are_ready_and_hold_leases(
    core: client.CoreV1Api, kube_client: client.ApiClient
) -> None:
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert sorted(nodes) == ["cpu-node-0", *(f"gpu-node-{i}" for i in range(4))]
    for node in nodes.values():
        assert is_true(node, "Ready")
    gpu = nodes["gpu-node-0"]
    assert gpu.status.allocatable[GPU] == "8"
    assert gpu.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert nodes["gpu-node-2"].metadata.labels["nvidia.com/gpu.product"] == (
        "NVIDIA-A100-SXM4-80GB"
    )
    assert GPU not in nodes["cpu-node-0"].status.allocatable
    leases = client.CoordinationV1Api(kube_client)

    def renewed_leases() -> set[str]:
        return {
            lease.metadata.name
            for lease in leases.list_namespaced_lease("kube-node-lease").items
            if lease.spec.holder_identity and lease.spec.renew_time
        }

    wait_until("a renewed lease per node", lambda: renewed_leases() >= set(nodes) or None)


def test_indexed_gpu_job_runs_on_gpu_nodes_and_succeeds(
    e2e_namespace: str, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    body = job(
        "train",
        {"qwenft.io/kwok-complete-after": "2s"},
        completions=2,
        parallelism=2,
        completionMode="Indexed",
    )
    batch.create_namespaced_job(e2e_namespace, body)
    done = wait_until(
        "the Job to complete",
        lambda: condition(batch.read_namespaced_job("train", e2e_namespace), "Complete"),
    )
    assert done.status == "True"
    pods = core.list_namespaced_pod(e2e_namespace, label_selector="job-name=train").items
    indexes = [p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods]
    assert sorted(indexes) == ["0", "1"]
    succeeded = [p for p in pods if p.status.phase == "Succeeded"]
    assert len(succeeded) == 2
    # anti-affinity puts the two pods on two nodes; only GPU nodes offer nvidia.com/gpu
    assert len({p.spec.node_name for p in succeeded}) == 2
    assert all(p.spec.node_name.startswith("gpu-node-") for p in succeeded)


def test_pod_asking_too_many_gpus_stays_pending_with_event(
    e2e_namespace: str, core: client.CoreV1Api
) -> None:
    pod = {"metadata": {"name": "greedy"}, "spec": {"containers": [container(**{GPU: "16"})]}}
    core.create_namespaced_pod(e2e_namespace, pod)

    def failed_scheduling() -> Any:
        events = core.list_namespaced_event(
            e2e_namespace, field_selector="involvedObject.name=greedy"
        ).items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_until("a FailedScheduling event", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in event.message

    # the scheduler records the event and patches the pod's status separately, in either order
    def marked_unschedulable() -> Any:
        pod_now = core.read_namespaced_pod("greedy", e2e_namespace)
        scheduled = condition(pod_now, "PodScheduled")
        return pod_now if scheduled is not None and scheduled.status == "False" else None

    pod_now = wait_until("the pod's PodScheduled condition to be False", marked_unschedulable)
    assert pod_now.status.phase == "Pending"
    assert condition(pod_now, "PodScheduled").reason == "Unschedulable"


def test_deployment_becomes_available(e2e_namespace: str, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(e2e_namespace, deployment("serve", replicas=2))

    def available() -> Any:
        dep = apps.read_namespaced_deployment("serve", e2e_namespace)
        cond = condition(dep, "Available")
        return dep if cond and cond.status == "True" and dep.status.ready_replicas == 2 else None

    assert wait_until("the Deployment to be Available", available).status.available_replicas == 2


def test_deleting_owner_garbage_collects_children(
    e2e_namespace: str, core: client.CoreV1Api, apps: client.AppsV1Api
) -> None:
    ns = e2e_namespace
    dep = apps.create_namespaced_deployment(ns, deployment("owner", replicas=2))
    owned = {
        "metadata": {
            "name": "owned-config",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "owner",
                    "uid": dep.metadata.uid,
                }
            ],
        },
        "data": {"k": "v"},
    }
    core.create_namespaced_config_map(ns, owned)
    wait_until(
        "2 running pods",
        lambda: (
            len([p for p in core.list_namespaced_pod(ns).items if p.status.phase == "Running"]) == 2
        ),
    )
    apps.delete_namespaced_deployment(
        "owner", ns, body=client.V1DeleteOptions(propagation_policy="Background")
    )

    def children_gone() -> bool:
        return (
            not apps.list_namespaced_replica_set(ns).items
            and not core.list_namespaced_pod(ns).items
            and not core.list_namespaced_config_map(
                ns, field_selector="metadata.name=owned-config"
            ).items
        )

    wait_until("ReplicaSet, pods and ConfigMap to be garbage-collected", children_gone)


@pytest.fixture
def widget_crd(kube_client: client.ApiClient) -> Iterator[str]:
    """A namespaced CRD whose spec carries a CEL rule; yields its plural."""
    ext = client.ApiextensionsV1Api(kube_client)
    group, plural = "e2e.qwenft.io", f"widgets{uuid.uuid4().hex[:6]}"
    spec_schema = {
        "type": "object",
        "required": ["minReplicas", "maxReplicas"],
        "properties": {
            "minReplicas": {"type": "integer"},
            "maxReplicas": {"type": "integer"},
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must not exceed maxReplicas",
            }
        ],
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": plural.capitalize()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    wait_until(
        "the CRD to be Established",
        lambda: is_true(ext.read_custom_resource_definition(f"{plural}.{group}"), "Established"),
    )
    yield plural
    ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_crd_cel_rule_rejects_bad_object(
    e2e_namespace: str, kube_client: client.ApiClient, widget_crd: str
) -> None:
    custom = client.CustomObjectsApi(kube_client)
    kind = widget_crd.capitalize()

    def widget(name: str, lo: int, hi: int) -> dict[str, Any]:
        return {
            "apiVersion": "e2e.qwenft.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {"minReplicas": lo, "maxReplicas": hi},
        }

    def create(obj: dict[str, Any]) -> Any:
        return custom.create_namespaced_custom_object(
            "e2e.qwenft.io", "v1", e2e_namespace, widget_crd, obj
        )

    # the CRD may take a moment to be served after Established; retry NotFound only
    wait_until("the CRD to be served", lambda: _created_unless_404(create, widget("good", 1, 2)))
    with pytest.raises(ApiException) as err:
        create(widget("bad", 3, 2))
    assert err.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in err.value.body


def _created_unless_404(create: Callable[[dict[str, Any]], Any], obj: dict[str, Any]) -> bool:
    try:
        create(obj)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def test_failure_annotation_fails_job_with_exit_code_and_message(
    e2e_namespace: str, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    message = "CUDA out of memory (simulated)"
    body = job(
        "oom",
        {
            "qwenft.io/kwok-fail-exit-code": "3",
            "qwenft.io/kwok-fail-message": message,
            "qwenft.io/kwok-complete-after": "1s",
        },
        podFailurePolicy={
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]},
                }
            ]
        },
    )
    batch.create_namespaced_job(e2e_namespace, body)
    failed = wait_until(
        "the Job to fail",
        lambda: condition(batch.read_namespaced_job("oom", e2e_namespace), "Failed"),
    )
    assert failed.status == "True"
    assert failed.reason == "PodFailurePolicy"
    assert "exit code 3" in failed.message
    (pod,) = core.list_namespaced_pod(e2e_namespace, label_selector="job-name=oom").items
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert terminated.exit_code == 3
    assert terminated.message == message
