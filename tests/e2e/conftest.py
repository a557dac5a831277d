"""Fixtures for tests against the real local control plane (hack/devcluster).

The session-scoped `cluster` fixture starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok once for all e2e tests and stops them at the end. It sets KUBECONFIG
(and puts kubectl and helm on PATH) for subprocesses. It fails, never skips, when the
binaries are missing or a component does not come up, showing the component's log.

    bash hack/build-cluster.sh                      # once per machine
    python -m pytest tests/e2e -m e2e               # starts and stops its own cluster
    QWENFT_E2E_REUSE_CLUSTER=1 python -m pytest ... # use the one `hack/cluster.py up` started

Fixtures: `cluster` (devcluster.ControlPlane), `kubeconfig_path` (Path), `kube_client`
(kubernetes.client.ApiClient), `e2e_namespace` (a fresh namespace whose default service
account exists, deleted afterwards), `operator` (the real operator process, one per test
module, with the CRD and priority classes installed) and `namespace` (`e2e_namespace` with
what the examples reference: dataset ConfigMap, token Secret, claims). A module that needs
another operator or control plane defines its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from operatorkit import (
    OperatorProcess,
    ensure_priority_classes,
    fresh_namespace,
    install_crd,
    prepare_namespace,
    running_operator,
)

HACK = Path(__file__).resolve().parents[2] / "hack"
sys.path.insert(0, str(HACK))

from devcluster import BinariesMissingError, ClusterError, ControlPlane  # noqa: E402

REUSE_ENV = "QWENFT_E2E_REUSE_CLUSTER"
POINTER = Path(
    os.environ.get("QWENFT_CLUSTER_STATE", Path.home() / ".cache/qwenft/devcluster/current")
)


def _reused_cluster() -> ControlPlane:
    try:
        cp = ControlPlane.load(Path(POINTER.read_text().strip()))
    except FileNotFoundError:
        pytest.fail(f"{REUSE_ENV}=1 but no cluster is recorded; run `hack/cluster.py up`")
    if not all(cp.status().values()):
        pytest.fail(f"{REUSE_ENV}=1 but the recorded cluster is not running:\n{cp.log_tails()}")
    return cp


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The running control plane, started once per test session."""
    reuse = os.environ.get(REUSE_ENV) == "1"
    if reuse:
        cp = _reused_cluster()
    else:
        error = ""
        try:
            cp = ControlPlane.start(tmp_path_factory.mktemp("cluster"), owner_pid=os.getpid())
        except BinariesMissingError as err:
            error = str(err)
        except ClusterError as err:
            error = f"the local control plane did not come up: {err}"
        if error:  # failed outside the except block, so pytest shows one message
            pytest.fail(error, pytrace=False)
    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "PATH")}
    os.environ["KUBECONFIG"] = str(cp.kubeconfig)
    os.environ["PATH"] = f"{cp.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield cp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not reuse:
            cp.stop()


@pytest.fixture(scope="session")
def kubeconfig_path(cluster: ControlPlane) -> Path:
    """Path of the admin kubeconfig (also exported as KUBECONFIG)."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube_client(cluster: ControlPlane) -> Iterator[client.ApiClient]:
    """A `kubernetes.client.ApiClient` logged in as cluster admin."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def e2e_namespace(kube_client: client.ApiClient) -> Iterator[str]:
    """A new namespace, usable at once (its `default` service account exists)."""
    with fresh_namespace(kube_client) as name:
        yield name


@pytest.fixture(scope="module")
def operator(
    kube_client: client.ApiClient, kubeconfig_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crd(kube_client)
    ensure_priority_classes(kube_client)
    with running_operator(kubeconfig_path, tmp_path_factory.mktemp("operator")) as proc:
        yield proc


@pytest.fixture
def namespace(kube_client: client.ApiClient, e2e_namespace: str, operator: OperatorProcess) -> str:
    prepare_namespace(kube_client, e2e_namespace)
    return e2e_namespace


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the components' log tails to every failed test that used the cluster."""
    outcome = yield
    report = outcome.get_result()
    used = getattr(item, "funcargs", {}).values()
    for cp in [value for value in used if isinstance(value, ControlPlane)][:1]:
        if report.failed:
            report.sections.append(("control plane logs", cp.log_tails()))
