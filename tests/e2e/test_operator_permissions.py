"""The operator's start-up permission check, against the real API server's RBAC.

Covers: a service account allowed to list and watch the operator's resources in one
namespace only is refused exactly the accesses of the other namespace; the operator
started as that account for both namespaces exits 2 before watching anything, naming the
namespace, every refused resource and verb, and the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from chartkit import service_account_kubeconfig
from kubernetes import client
from operatorkit import wait_until
from qwenft_operator import kube, permissions

pytestmark = pytest.mark.e2e

ACCOUNT = "narrow-operator"


def grant_watches(api: client.ApiClient, namespace: str, account_namespace: str) -> None:
    """A Role in ``namespace`` with list/watch on the watched resources, for ACCOUNT."""
    rules = [
        {"apiGroups": [group], "resources": [resource], "verbs": list(permissions.VERBS)}
        for group, resource in permissions.WATCHED
    ]
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": ACCOUNT}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
            "subjects": [
                {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": account_namespace}
            ],
        },
    )


def test_watch_refused_in_one_namespace_stops_the_operator_at_start(
    kube_client: client.ApiClient, kubeconfig_path: Path, e2e_namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_client)
    other = f"other-{e2e_namespace}"
    core.create_namespace({"metadata": {"name": other}})
    try:
        core.create_namespaced_service_account(e2e_namespace, {"metadata": {"name": ACCOUNT}})
        grant_watches(kube_client, e2e_namespace, e2e_namespace)
        narrow = service_account_kubeconfig(
            kubeconfig_path, e2e_namespace, ACCOUNT, tmp_path / "narrow.kubeconfig"
        )
        clients = kube.Clients.connect(str(narrow))
        try:
            # The authorizer sees a new RoleBinding through its informers, a moment later.
            wait_until(
                f"the Role in {e2e_namespace} to take effect",
                lambda: not kube.denied(clients, permissions.required([e2e_namespace])),
            )
            refused = kube.denied(clients, permissions.required([e2e_namespace, other]))
        finally:
            clients.close()
        assert refused == permissions.required([other])

        env = {
            **os.environ,
            "KUBECONFIG": str(narrow),
            "QWENFT_NAMESPACES": f"{e2e_namespace},{other}",
        }
        started = subprocess.run(
            [sys.executable, "-m", "qwenft_operator.main"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert started.returncode == 2, started.stderr[-3000:]
        message = started.stderr.strip().splitlines()[-1]
        assert message.startswith("qwenft operator: the operator may not list ")
        for group, resource in permissions.WATCHED:
            name = f"{resource}.{group}" if group else resource
            for verb in permissions.VERBS:
                assert f"{verb} {name} in namespace {other}" in message
        assert f"namespace {e2e_namespace}" not in message
        assert f"grant the chart's Role in {other} or remove it from QWENFT_NAMESPACES" in message
    finally:
        core.delete_namespace(other)
