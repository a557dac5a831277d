"""The operator through API outages and namespace deletion, against the real control plane.

Covers: an operator started while its API server can't be reached keeps running, logs one
line per attempt, and starts reconciling once the API server is reachable (the outage is a
TCP relay to the real API server that is closed, then opened); the real API server's refusal
to create objects in a namespace being deleted is recognised as such (and an RBAC 403 is
not); deleting a namespace under a running run leaves no error or traceback in the
operator's log and no reconcile error counted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import (
    OperatorProcess,
    create_run,
    ensure_priority_classes,
    example,
    install_crd,
    phase_of,
    prepare_namespace,
    running_operator,
    wait_until,
)
from qwenft_operator import kube
from support import free_port

pytestmark = pytest.mark.e2e

HOLD = "qwenft.io/test-hold"


class Relay:
    """A TCP relay from a local port to the API server: the outage is the relay being shut."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                near, _ = server.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def relayed_kubeconfig(kubeconfig: Path, port: int, path: Path) -> tuple[Path, tuple[str, int]]:
    """A copy of ``kubeconfig`` whose server is 127.0.0.1:``port``; and the real address."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    host, real_port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    cluster["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path, (host, int(real_port))


@pytest.fixture
def namespace(kube_client: client.ApiClient, e2e_namespace: str) -> str:
    install_crd(kube_client)
    ensure_priority_classes(kube_client)
    prepare_namespace(kube_client, e2e_namespace)
    return e2e_namespace


def test_operator_started_during_an_outage_waits_and_then_reconciles(
    kube_client: client.ApiClient, kubeconfig_path: Path, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    config, target = relayed_kubeconfig(kubeconfig_path, port, tmp_path / "relayed.kubeconfig")
    relay = Relay(port, target)
    operator = OperatorProcess(config, tmp_path, QWENFT_NAMESPACES=namespace)
    operator.launch()
    try:
        wait_until(
            "two logged attempts to reach the API server",
            lambda: "(attempt 2: " in operator.logs(),
            timeout=30,
            why=operator.logs,
        )
        assert operator.proc is not None and operator.proc.poll() is None, operator.logs()
        assert "Traceback" not in operator.logs()
        relay.open()
        wait_until("the operator to become healthy", operator.healthy, timeout=90)
        create_run(kube_client, namespace, example("lora-single-gpu"))
        name = example("lora-single-gpu")["metadata"]["name"]
        wait_until(
            "the run to get a phase",
            lambda: phase_of(kube_client, namespace, name),
            timeout=60,
            why=operator.logs,
        )
    finally:
        operator.stop()
        relay.close()


@contextlib.contextmanager
def held_namespace(core: client.CoreV1Api, name: str) -> Iterator[None]:
    """A namespace kept in Terminating by a ConfigMap with a finalizer, until released."""
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "hold", "finalizers": [HOLD]}})
    try:
        yield
    finally:
        with contextlib.suppress(ApiException):
            core.patch_namespaced_config_map("hold", name, {"metadata": {"finalizers": None}})
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


def test_refusal_in_a_terminating_namespace_is_told_from_rbac(
    kube_client: client.ApiClient, e2e_namespace: str
) -> None:
    core = client.CoreV1Api(kube_client)
    name = f"ending-{e2e_namespace}"
    with held_namespace(core, name):
        core.delete_namespace(name)
        wait_until(
            "the namespace to be Terminating",
            lambda: core.read_namespace(name).status.phase == "Terminating",
        )
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
        assert refused.value.status == 403
        assert kube.namespace_terminating(refused.value)
    rbac_refusal = ApiException(status=403, reason="Forbidden")
    rbac_refusal.body = '{"kind":"Status","reason":"Forbidden","code":403}'
    assert not kube.namespace_terminating(rbac_refusal)


def test_deleting_a_namespace_under_a_run_logs_no_errors(
    kube_client: client.ApiClient, kubeconfig_path: Path, tmp_path: Path, e2e_namespace: str
) -> None:
    install_crd(kube_client)
    ensure_priority_classes(kube_client)
    core = client.CoreV1Api(kube_client)
    name = f"gone-{e2e_namespace}"
    with held_namespace(core, name):
        prepare_namespace(kube_client, name)
        run = example("lora-single-gpu")
        with running_operator(kubeconfig_path, tmp_path, QWENFT_NAMESPACES=name) as operator:
            create_run(kube_client, name, run)
            wait_until(
                "the run to reach Training",
                lambda: phase_of(kube_client, name, run["metadata"]["name"]) == "Training",
                timeout=120,
                why=operator.logs,
            )
            core.delete_namespace(name)

            def children_gone() -> bool:
                jobs = client.BatchV1Api(kube_client).list_namespaced_job(name).items
                return not jobs and not core.list_namespaced_pod(name).items

            wait_until("the namespace's Jobs and pods to be gone", children_gone, timeout=120)
            metrics = (
                urllib.request.urlopen(
                    f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
                )
                .read()
                .decode()
            )
            logs = operator.logs()
        assert "Traceback" not in logs, logs
        assert "failed" not in logs.lower(), logs
        assert 'reason="api403"' not in metrics
