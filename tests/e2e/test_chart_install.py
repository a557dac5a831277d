"""`helm install` of the chart into the real local control plane.

Covers:
- the release installs into a namespace that enforces the "restricted" Pod Security Standard
  (and that namespace really does reject a privileged pod, so the check has teeth);
- the QwenFineTune CRD is Established; the Deployment, metrics Service, ServiceAccount,
  Role + RoleBinding in the watched namespace and the CRD-reader ClusterRole exist;
- the API server admits the operator pod (the ReplicaSet creates it) and, by server-side dry
  run, the `helm test` pod, under "restricted";
- the ServiceAccount holds exactly the access the operator needs, checked by the API server's
  own authorizer (SubjectAccessReview through `kubectl auth can-i --as`): every verb of the
  contract is allowed in the watched namespace; Secrets are readable only there; pods cannot
  be created, other namespaces are out of reach, and nothing is granted cluster-wide but the
  CRD read; in cluster-wide mode the same verbs hold in every namespace, and no Secret is
  readable anywhere;
- monitoring objects: with monitoring enabled but no monitoring.coreos.com/v1 API the install
  succeeds, creates none and NOTES says so; once the API is served (stand-in CRDs) the same
  install creates the ServiceMonitor, PodMonitor, PrometheusRule and dashboard ConfigMap;
- `helm uninstall` removes the release but keeps the CRD.

- cluster-wide mode, for real: the operator, authenticated only as the chart's
  ServiceAccount (a TokenRequest token), drives the single-GPU LoRA example to Ready; the only
  request the API server refuses is the Secret existence check, which that mode does not grant.

Namespaced mode with the operator as the ServiceAccount (and a permission taken away) is
exercised in test_monitoring.py, whose stack serves both purposes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import (
    CHART,
    CRD_NAME,
    RESTRICTED,
    denials,
    fullname,
    helm_install,
    helm_uninstall,
    ok,
    release_name,
    run,
    service_account_kubeconfig,
    wait_for_grants,
)
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import (
    CLAIMS,
    create_run,
    ensure_priority_classes,
    example,
    prepare_namespace,
    running_operator,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def restricted_namespace(kube_client: Any) -> Iterator[str]:
    """A namespace that enforces the "restricted" Pod Security Standard."""
    core = client.CoreV1Api(kube_client)
    name = f"qwenft-system-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def release(
    cluster: Any, restricted_namespace: str, e2e_namespace: str
) -> Iterator[tuple[str, str, str]]:
    """(release, operator namespace, watched namespace) of an installed chart."""
    name = release_name()
    helm_install(name, restricted_namespace, [e2e_namespace])
    yield name, restricted_namespace, e2e_namespace
    helm_uninstall(name, restricted_namespace)


def test_restricted_namespace_rejects_a_privileged_pod(restricted_namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
            ]
        },
    }
    done = run(
        "kubectl", "apply", "--dry-run=server", "-n", restricted_namespace, "-f", "-",
        stdin=yaml.safe_dump(pod),
    )  # fmt: skip
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted' in done.stderr


def test_install_creates_the_operator_objects(
    kube_client: Any, release: tuple[str, str, str]
) -> None:
    name, namespace, watched = release
    ext = client.ApiextensionsV1Api(kube_client)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(CRD_NAME)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_until("the QwenFineTune CRD to be Established", established)
    objects = fullname(name)
    apps = client.AppsV1Api(kube_client)
    core = client.CoreV1Api(kube_client)
    rbac = client.RbacAuthorizationV1Api(kube_client)
    deployment = apps.read_namespaced_deployment(objects, namespace)
    assert deployment.spec.replicas == 1
    assert deployment.spec.strategy.type == "Recreate"
    assert core.read_namespaced_service(objects, namespace).spec.ports[0].name == "metrics"
    core.read_namespaced_service_account(objects, namespace)
    role = rbac.read_namespaced_role(objects, watched)
    assert {r.resources[0] for r in role.rules} >= {"qwenfinetunes", "jobs", "secrets"}
    rbac.read_namespaced_role_binding(objects, watched)
    rbac.read_cluster_role(f"{objects}-cluster-reader")
    with pytest.raises(ApiException) as err:
        rbac.read_cluster_role(objects)  # namespaced mode: no broad ClusterRole
    assert err.value.status == 404

    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=operator"
    pods = wait_until(
        "the ReplicaSet to create the operator pod under the restricted policy",
        lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
    )
    assert pods[0].spec.security_context.run_as_non_root is True


def test_helm_test_pod_is_admitted(release: tuple[str, str, str]) -> None:
    name, namespace, watched = release
    manifest = ok(
        "helm", "template", name, str(CHART), "--namespace", namespace,
        "--set", f"operator.watchNamespaces={{{watched}}}",
        "--show-only", "templates/tests/test-metrics.yaml",
    )  # fmt: skip
    done = run("kubectl", "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr


ALLOWED_IN_WATCHED = [
    ("get", "qwenfinetunes.finetune.qwenft.io"),
    ("watch", "qwenfinetunes.finetune.qwenft.io"),
    ("patch", "qwenfinetunes.finetune.qwenft.io/status"),
    ("watch", "qwenmodelservers.finetune.qwenft.io"),
    ("patch", "qwenmodelservers.finetune.qwenft.io/status"),
    ("patch", "deployments.apps"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("list", "pods"),
    ("create", "services"),
    ("patch", "configmaps"),
    ("create", "deployments.apps"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("get", "persistentvolumeclaims"),
    ("watch", "persistentvolumeclaims"),
    ("list", "configmaps"),
    ("get", "secrets"),
]
DENIED_IN_WATCHED = [
    ("list", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "persistentvolumeclaims"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("update", "deployments.apps"),
]


def _can_i(sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    done = run("kubectl", "auth", "can-i", verb, resource, "--as", sa, *where)
    assert done.stdout.strip() in {"yes", "no"}, done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def wait_for_bindings(sa: str, namespace: str | None) -> None:
    """Wait until the authorizer applies the release's RoleBinding (or, with no namespace,
    its ClusterRoleBinding) and the CRD reader's: it sees RBAC objects through informers,
    a moment after helm created them."""
    verb, resource = ALLOWED_IN_WATCHED[0]
    wait_until(
        f"{sa}'s grant to {verb} {resource} to take effect",
        lambda: _can_i(sa, verb, resource, namespace),
    )
    crds = "customresourcedefinitions.apiextensions.k8s.io"
    wait_until(f"{sa}'s CRD read to take effect", lambda: _can_i(sa, "list", crds, None))


def test_service_account_has_least_privilege(release: tuple[str, str, str]) -> None:
    name, namespace, watched = release
    sa = f"system:serviceaccount:{namespace}:{fullname(name)}"
    wait_for_bindings(sa, watched)
    for verb, resource in ALLOWED_IN_WATCHED:
        assert _can_i(sa, verb, resource, watched), f"cannot {verb} {resource} in {watched}"
    for verb, resource in DENIED_IN_WATCHED:
        assert not _can_i(sa, verb, resource, watched), f"may {verb} {resource} in {watched}"
    for verb, resource in (("get", "secrets"), ("list", "qwenfinetunes.finetune.qwenft.io")):
        assert not _can_i(sa, verb, resource, "default"), f"may {verb} {resource} in default"
        assert not _can_i(sa, verb, resource, None), f"may {verb} {resource} cluster-wide"
    assert _can_i(sa, "list", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not _can_i(sa, "list", "namespaces", None)


def test_cluster_wide_mode_grants_no_secret_access(restricted_namespace: str) -> None:
    name = release_name()
    helm_install(name, restricted_namespace, [])
    try:
        sa = f"system:serviceaccount:{restricted_namespace}:{fullname(name)}"
        wait_for_bindings(sa, None)
        for verb, resource in [a for a in ALLOWED_IN_WATCHED if a[1] != "secrets"]:
            assert _can_i(sa, verb, resource, None), f"cannot {verb} {resource} cluster-wide"
        assert _can_i(sa, "watch", "namespaces", None)
        for namespace in ("default", restricted_namespace, None):
            assert not _can_i(sa, "get", "secrets", namespace), f"may read Secrets in {namespace}"
        for verb, resource in DENIED_IN_WATCHED:
            assert not _can_i(sa, verb, resource, None), f"may {verb} {resource} cluster-wide"
    finally:
        helm_uninstall(name, restricted_namespace)


def test_uninstall_keeps_the_crd(
    kube_client: Any, restricted_namespace: str, e2e_namespace: str
) -> None:
    name = release_name()
    helm_install(name, restricted_namespace, [e2e_namespace])
    helm_uninstall(name, restricted_namespace)
    apps = client.AppsV1Api(kube_client)
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment(fullname(name), restricted_namespace)
    assert err.value.status == 404
    client.ApiextensionsV1Api(kube_client).read_custom_resource_definition(CRD_NAME)


def _stand_in_crd(plural: str, kind: str) -> dict[str, Any]:
    """A schemaless monitoring.coreos.com/v1 CRD: only makes the API group exist."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"plural": plural, "kind": kind},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


MONITORS = {"servicemonitors": "ServiceMonitor", "podmonitors": "PodMonitor"}
MONITORS["prometheusrules"] = "PrometheusRule"


def test_monitoring_objects_follow_the_prometheus_operator_api(
    kube_client: Any, restricted_namespace: str, e2e_namespace: str
) -> None:
    values = str(CHART / "ci" / "monitoring-values.yaml")
    sets = ["--set", f"dashboard.namespace={restricted_namespace}"]
    custom = client.CustomObjectsApi(kube_client)
    ext = client.ApiextensionsV1Api(kube_client)

    def monitors() -> dict[str, list[str]]:
        return {
            plural: [
                o["metadata"]["name"]
                for o in custom.list_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", restricted_namespace, plural
                )["items"]
            ]
            for plural in MONITORS
        }

    # Without the API: the install succeeds, creates no monitors and says why.
    def install(name: str) -> str:
        return ok(
            "helm", "install", name, str(CHART), "-n", restricted_namespace,
            "--take-ownership", "-f", values, *sets,
        )  # fmt: skip

    name = release_name()
    out = install(name)
    assert "does not serve monitoring.coreos.com/v1" in out
    helm_uninstall(name, restricted_namespace)
    for plural, kind in MONITORS.items():
        ext.create_custom_resource_definition(_stand_in_crd(plural, kind))
    try:

        def served() -> bool:
            found = run(
                "kubectl", "api-resources", "--api-group=monitoring.coreos.com", "-o", "name"
            )
            return all(f"{p}.monitoring.coreos.com" in found.stdout for p in MONITORS)

        wait_until("the monitoring.coreos.com/v1 API", served, timeout=30)
        name = release_name()
        out = install(name)
        assert "does not serve" not in out
        assert monitors() == {
            "servicemonitors": [fullname(name)],
            "podmonitors": [f"{fullname(name)}-runs"],
            "prometheusrules": [fullname(name)],
        }
        dashboards = client.CoreV1Api(kube_client).list_namespaced_config_map(
            restricted_namespace, label_selector="grafana_dashboard=1"
        )
        assert [c.metadata.name for c in dashboards.items] == [f"{fullname(name)}-dashboard"]
        helm_uninstall(name, restricted_namespace)
        assert monitors() == {plural: [] for plural in MONITORS}
    finally:
        for plural in MONITORS:
            ext.delete_custom_resource_definition(f"{plural}.monitoring.coreos.com")


def test_operator_cluster_wide_with_chart_permissions_reaches_ready(
    kube_client: Any,
    kubeconfig_path: Path,
    restricted_namespace: str,
    e2e_namespace: str,
    tmp_path: Path,
) -> None:
    name = release_name()
    helm_install(name, restricted_namespace, [])
    ensure_priority_classes(kube_client)
    prepare_namespace(kube_client, e2e_namespace)
    kubeconfig = service_account_kubeconfig(
        kubeconfig_path, restricted_namespace, fullname(name), tmp_path / "sa.kubeconfig"
    )
    wait_for_grants(kubeconfig, [])
    body = example("lora-single-gpu")
    run_name = body["metadata"]["name"]
    try:
        with running_operator(kubeconfig, tmp_path, QWENFT_NAMESPACES="") as operator:
            create_run(kube_client, e2e_namespace, body)
            try:
                ready = wait_phase(kube_client, e2e_namespace, run_name, "Ready", timeout=180)
            except BaseException:
                print(operator.logs())
                raise
            logs = operator.logs()
        assert ready["status"]["endpoint"]["url"].startswith(f"http://{run_name}-serve.")
        # Cluster-wide mode may not read Secrets: the existence check is skipped, nothing else.
        assert {(verb, resource) for verb, resource, _ in denials(logs)} <= {("get", "secrets")}
    finally:
        for claim in CLAIMS:
            client.CoreV1Api(kube_client).delete_persistent_volume(f"{e2e_namespace}-{claim}")
        helm_uninstall(name, restricted_namespace)
