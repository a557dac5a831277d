"""Helpers for the operator's e2e tests: the CRD, a namespace with what the examples
reference, the operator as a subprocess, and polling with deadlines.

Not a test module; ``test_operator_*`` modules import it (pytest puts this directory on
``sys.path``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from qwenft_operator.spec import GROUP, PLURAL, VERSION
from support import free_port, poll

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "finetune.qwenft.io_qwenfinetunes.yaml"
CRDS = (CRD, ROOT / "crds" / "finetune.qwenft.io_qwenmodelservers.yaml")
EXAMPLES = ROOT / "examples"
T = TypeVar("T")
# Claims, ConfigMaps and Secrets the shipped examples refer to.
CLAIMS = ("qwenft-runs", "model-cache", "datasets", "models")
SECRETS = {"hf-token": {"token": "aGYtdGVzdA=="}, "s3-credentials": {"AWS_ACCESS_KEY_ID": "eA=="}}
CONFIG_MAPS = {"support-chats": {"train.jsonl": '{"messages": []}\n'}}
PRIORITY_CLASSES = ("training", "batch-low")
# How long kwok keeps a Job pod Running before it succeeds (a Go duration; default 1s).
KWOK_COMPLETE_AFTER = "qwenft.io/kwok-complete-after"


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 60.0,
    why: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline.

    An API error inside ``probe`` counts as "not yet" (the last one is reported); ``why``
    adds context to the failure, such as a process's log tail.
    """
    found = poll(probe, timeout=timeout, what=what, retry_on=(ApiException,), why=why)
    assert found is not None
    return found


@contextlib.contextmanager
def fresh_namespace(api: client.ApiClient) -> Iterator[str]:
    """A new namespace, usable at once (its `default` service account exists); deleted after."""
    core = client.CoreV1Api(api)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def usable() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status != 404:
                raise
            return False
        return True

    wait_until(f"the default service account of namespace {name}", usable, timeout=30)
    try:
        yield name
    finally:
        core.delete_namespace(name)


@contextlib.contextmanager
def own_gpu_nodes(api: client.ApiClient, count: int, gpus: int = 8) -> Iterator[dict[str, str]]:
    """``count`` fresh kwok GPU nodes only one test's pods can select; deleted after.

    Yields the node selector that picks exactly these nodes. A test that counts placed
    pods or free GPUs uses them, so pods that earlier tests left Terminating on the shared
    nodes (kwok keeps a pod whose Job's tracking finalizer outlived the Job) can't skew it.
    """
    from devcluster.nodes import build_node

    core = client.CoreV1Api(api)
    pool = uuid.uuid4().hex[:8]
    selector = {"qwenft.io/e2e-pool": pool}
    names = [f"pool-{pool}-{i}" for i in range(count)]
    for name in names:
        core.create_node(
            build_node(
                name,
                labels={**selector, "nvidia.com/gpu.present": "true"},
                capacity={
                    "cpu": "96",
                    "memory": "1Ti",
                    "pods": "110",
                    "ephemeral-storage": "2Ti",
                    "nvidia.com/gpu": str(gpus),
                },
            )
        )

    def ready(name: str) -> bool:
        node = core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    try:
        for name in names:
            wait_until(f"kwok to report node {name} Ready", lambda n=name: ready(n), timeout=30)
        yield selector
    finally:
        for name in names:
            with contextlib.suppress(ApiException):
                core.delete_node(name)


def install_crd(api: client.ApiClient) -> None:
    """Create or replace the CRDs (QwenFineTune, QwenModelServer); wait until Established."""
    for path in CRDS:
        _install_crd(api, path)


def _install_crd(api: client.ApiClient, path: Path) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    try:
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)
    except ApiException as err:
        if err.status != 404:
            raise
        ext.create_custom_resource_definition(body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_until("the CRD to be Established", established, timeout=30)


def ensure_priority_classes(api: client.ApiClient) -> None:
    sched = client.SchedulingV1Api(api)
    for name in PRIORITY_CLASSES:
        with contextlib.suppress(ApiException):
            sched.create_priority_class({"metadata": {"name": name}, "value": 1000})


def prepare_namespace(api: client.ApiClient, namespace: str) -> None:
    """Bound claims (static PVs), the dataset ConfigMap and the Secrets of the examples."""
    core = client.CoreV1Api(api)
    for claim in CLAIMS:
        pv = f"{namespace}-{claim}"
        core.create_persistent_volume(
            {
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Ti"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{pv}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    for name, data in CONFIG_MAPS.items():
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": data})
    for name, encoded in SECRETS.items():
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": encoded})

    def bound() -> bool:
        claims = core.list_namespaced_persistent_volume_claim(namespace).items
        return len(claims) == len(CLAIMS) and all(c.status.phase == "Bound" for c in claims)

    wait_until("the example claims to be Bound", bound, timeout=60)


def example(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    body["spec"].update(copy.deepcopy(spec))
    return body


def create_run(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def get_run(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def patch_run(api: client.ApiClient, namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch
    )


def phase_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    status = get_run(api, namespace, name).get("status") or {}
    phase: str | None = status.get("phase")
    return phase


def wait_phase(
    api: client.ApiClient, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = get_run(api, namespace, name)
        current = (run.get("status") or {}).get("phase")
        if current == "Failed" and phase != "Failed":
            pytest.fail(f"{name} failed: {run['status'].get('conditions')}")
        return run if current == phase else None

    return wait_until(f"{namespace}/{name} to reach phase {phase}", reached, timeout=timeout)


def condition(run: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (run.get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            found: dict[str, Any] = item
            return found
    return None


def children(api: client.ApiClient, namespace: str, run: str) -> dict[str, list[str]]:
    """Names of the run's children by kind (found by label)."""
    selector = f"finetune.qwenft.io/name={run}"
    core, batch, apps = client.CoreV1Api(api), client.BatchV1Api(api), client.AppsV1Api(api)
    listers = {
        "Job": batch.list_namespaced_job,
        "ConfigMap": core.list_namespaced_config_map,
        "Service": core.list_namespaced_service,
        "Deployment": apps.list_namespaced_deployment,
    }
    return {
        kind: sorted(o.metadata.name for o in lister(namespace, label_selector=selector).items)
        for kind, lister in listers.items()
    }


class OperatorProcess:
    """``python -m qwenft_operator.main`` as a child process, logging to a file."""

    def __init__(self, kubeconfig: Path, log_dir: Path, **env: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "QWENFT_METRICS_PORT": str(self.metrics_port),
            "QWENFT_HEALTH_PORT": str(self.health_port),
            "QWENFT_PROGRESS_INTERVAL": "2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.launch()
        wait_until("the operator's liveness endpoint", self.healthy, timeout=60)

    def launch(self) -> None:
        """Start the process without waiting for it to become healthy."""
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qwenft_operator.main"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"the operator exited {self.proc.returncode}:\n{self.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", self.health_port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-6000:]
            for p in sorted(self.log_dir.glob("operator-*.log"))
        )


@contextlib.contextmanager
def running_operator(kubeconfig: Path, log_dir: Path, **env: str) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(kubeconfig, log_dir, **env)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def pods_of(api: client.ApiClient, namespace: str, run: str, component: str) -> list[Any]:
    """The run's pods of one component (validate, train, merge, serve), by the labels."""
    selector = f"finetune.qwenft.io/name={run},finetune.qwenft.io/component={component}"
    pods: list[Any] = (
        client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    )
    return pods


def warning_with(api: client.ApiClient, namespace: str, run: str, reason: str, text: str) -> bool:
    """The run has a Warning Event with ``reason`` whose message contains ``text``."""
    events = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={run},involvedObject.kind=QwenFineTune"
        )
        .items
    )
    return any(e.type == "Warning" and e.reason == reason and text in e.message for e in events)
