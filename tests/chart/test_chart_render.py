"""The chart renders valid, least-privilege, restricted manifests with real Helm.

Covers: `helm lint --strict` and `helm template` of every ci/*-values.yaml; every rendered
object validated against the Kubernetes schemas of each supported version
(kubernetes-validate, strict); the operator and helm-test pods meet the "restricted" Pod
Security Standard; the Deployment runs one replica with Recreate, kopf's liveness probe, the
QWENFT_* environment and a read-only root with a writable /tmp; RBAC in both modes comes from
one rule list, never grants Secret reads through a ClusterRole, and namespaced mode makes one
Role per watched namespace; the environment is what OperatorConfig reads; monitoring
objects appear only when enabled and the Prometheus Operator API exists; the dashboard
ConfigMap carries the generated JSON; long release names are cut to 63 characters; the
kubeVersion floor (1.30) is enforced; the chart's defaults equal the operator's, and its
appVersion is the package version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from charttools import (
    CHART,
    CI_VALUES,
    MONITORING_API,
    MONITORING_KINDS,
    Render,
    by_kind,
    pod_specs,
    restricted_violations,
    run_helm,
)

# The chart's kubeVersion is >=1.30; validate against every minor the schemas cover from there.
SUPPORTED = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"]
CI_IDS = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]


def _ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_lint_strict(helm: Path, values: Path) -> None:
    done = run_helm(helm, ["lint", "--strict", str(CHART), "--values", str(values)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_manifests_valid_for_supported_versions(render: Render, values: Path) -> None:
    objects = render(values=[values], api_versions=[MONITORING_API])
    assert objects
    for obj in objects:
        if obj["kind"] in MONITORING_KINDS:
            continue  # Prometheus Operator CRDs: not in the Kubernetes schemas
        for version in SUPPORTED:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {err}")


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_pods_meet_restricted_pod_security(render: Render, values: Path) -> None:
    specs = pod_specs(render(values=[values]))
    assert {name.split("/")[0] for name, _ in specs} == {"Deployment", "Pod"}
    for name, spec in specs:
        assert restricted_violations(spec) == [], name


def test_restricted_check_catches_violations() -> None:
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    problems = restricted_violations(bad)
    assert len(problems) == 7, problems


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment


def test_deployment_shape(render: Render) -> None:
    deployment = _deployment(render())
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/qwenft/operator:0.1.0"
    assert container["args"] == ["qwenft", "operator"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "QWENFT_NAMESPACES": "",
        "QWENFT_TRAINER_IMAGE": "ghcr.io/qwenft/trainer:0.1.0",
        "QWENFT_VLLM_IMAGE": "vllm/vllm-openai:v0.11.0",
        "QWENFT_CURL_IMAGE": "curlimages/curl:8.11.1",
        "QWENFT_AWSCLI_IMAGE": "amazon/aws-cli:2.22.35",
        "QWENFT_GPU_RESOURCE": "nvidia.com/gpu",
        "QWENFT_METRICS_PORT": "8080",
        "QWENFT_HEALTH_PORT": "8081",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsUser"] == 65532
    (service,) = by_kind(render(), "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_custom_images_and_namespaces_reach_the_environment(render: Render) -> None:
    objects = render(values=[_ci("custom-images"), _ci("namespaced")])
    (container,) = _deployment(objects)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "registry.example.com/ml/qwenft-operator:0.1.0-rc1"
    assert env["QWENFT_NAMESPACES"] == "team-a,team-b"
    assert env["QWENFT_TRAINER_IMAGE"] == "registry.example.com/ml/qwenft-trainer:0.1.0-rc1"
    assert env["QWENFT_GPU_RESOURCE"] == "amd.com/gpu"
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"


def _rules(role: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def test_rbac_cluster_wide(render: Render) -> None:
    objects = render()
    assert by_kind(objects, "Role") == []
    roles = {r["metadata"]["name"]: r for r in by_kind(objects, "ClusterRole")}
    assert set(roles) == {"qwenft-operator", "qwenft-operator-cluster-reader"}
    main = _rules(roles["qwenft-operator"])
    assert ("", "namespaces", "watch") in main
    assert all(resource != "secrets" for _, resource, _ in main)
    # Kueue's Workloads are read (a queued run's reason), never written.
    assert [v for g, r, v in main if (g, r) == ("kueue.x-k8s.io", "workloads")] == [
        "get",
        "list",
        "watch",
    ]
    assert _rules(roles["qwenft-operator-cluster-reader"]) == sorted(
        [
            ("apiextensions.k8s.io", "customresourcedefinitions", verb)
            for verb in ("get", "list", "watch")
        ]
        + [("", "nodes", "list")]  # the nodes' GPU memory labels, for the GPU-fit check
    )
    for binding in by_kind(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "qwenft-operator", "namespace": "qwenft-system"}
        ]


def test_rbac_namespaced_uses_the_same_rules(render: Render) -> None:
    roles_cluster_wide = by_kind(render(), "ClusterRole")
    cluster_main = next(r for r in roles_cluster_wide if r["metadata"]["name"] == "qwenft-operator")
    objects = render(values=[_ci("namespaced")])
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert [c["metadata"]["name"] for c in by_kind(objects, "ClusterRole")] == [
        "qwenft-operator-cluster-reader"
    ]
    for role in roles:
        extra = set(_rules(role)) - set(_rules(cluster_main))
        missing = set(_rules(cluster_main)) - set(_rules(role))
        assert extra == {("", "secrets", "get")}
        assert {resource for _, resource, _ in missing} == {"namespaces"}


def test_no_rbac_when_disabled(render: Render) -> None:
    kinds = {o["kind"] for o in render(sets=["rbac.create=false", "serviceAccount.create=false"])}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})
    assert "ServiceAccount" not in kinds


def test_monitoring_needs_toggle_and_api(render: Render) -> None:
    monitoring = _ci("monitoring")
    with_api = {o["kind"] for o in render(values=[monitoring], api_versions=[MONITORING_API])}
    assert with_api >= MONITORING_KINDS
    without_api = {o["kind"] for o in render(values=[monitoring])}
    assert without_api.isdisjoint(MONITORING_KINDS)
    default = {o["kind"] for o in render(api_versions=[MONITORING_API])}
    assert default.isdisjoint(MONITORING_KINDS)
    assert "ConfigMap" not in default


def test_monitoring_objects_select_the_right_targets(render: Render) -> None:
    objects = render(values=[_ci("monitoring")], api_versions=[MONITORING_API])
    (service_monitor,) = by_kind(objects, "ServiceMonitor")
    (service,) = by_kind(objects, "Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    selector = pod_monitor["spec"]["selector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/managed-by": "qwenft-operator"}
    assert selector["matchExpressions"][0]["values"] == ["train", "serve"]
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "http"]
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = render(
        values=[_ci("monitoring"), _ci("namespaced")], api_versions=[MONITORING_API]
    )
    (pod_monitor,) = by_kind(namespaced, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_dashboard_configmap_carries_the_generated_json(render: Render) -> None:
    objects = render(values=[_ci("monitoring")])
    (config_map,) = by_kind(objects, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "qwenft"}
    shipped = json.loads((CHART / "dashboards" / "qwenft.json").read_text())
    assert json.loads(config_map["data"]["qwenft.json"]) == shipped


def test_long_release_names_are_cut_to_63(helm: Path) -> None:
    release = "r" * 53  # the longest release name helm accepts
    done = run_helm(
        helm,
        [
            "template",
            release,
            str(CHART),
            "--values",
            str(_ci("monitoring")),
            "--api-versions",
            MONITORING_API,
        ],
    )
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    keys = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    assert len(keys) == len(objects)  # suffixes survive the cut, so nothing collides
    assert max(len(name) for _, _, name in keys) == 63, sorted(keys)


def test_environment_matches_the_operator_settings(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwenft_operator.settings import ENV_PREFIX, OperatorConfig

    (container,) = _deployment(render())["spec"]["template"]["spec"]["containers"]
    chart_env = {e["name"] for e in container["env"]}
    fields = {ENV_PREFIX + name.upper() for name in OperatorConfig.model_fields}
    assert chart_env <= fields, f"the operator does not read {sorted(chart_env - fields)}"
    # Tuning knobs with sound defaults stay out of values.yaml (operator.extraEnv sets them).
    assert fields - chart_env == {"QWENFT_PROGRESS_INTERVAL"}
    env = {e["name"]: e["value"] for e in container["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorConfig.from_env()
    assert settings.cluster_wide
    assert settings.trainer_image == env["QWENFT_TRAINER_IMAGE"]


def test_kube_version_floor_is_enforced(helm: Path) -> None:
    args = ["template", "qwenft-operator", str(CHART), "--kube-version"]
    too_old = run_helm(helm, [*args, "v1.29.9"])
    assert too_old.returncode != 0
    assert "incompatible with Kubernetes v1.29.9" in too_old.stderr
    assert run_helm(helm, [*args, "v1.30.0"]).returncode == 0


def test_defaults_agree_with_the_operator_and_the_package(render: Render) -> None:
    import tomllib

    from qwenft_operator.settings import ENV_PREFIX, OperatorConfig

    (container,) = _deployment(render())["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    defaults = OperatorConfig().model_dump()
    for name, value in env.items():
        field = name.removeprefix(ENV_PREFIX).lower()
        if field != "namespaces":
            assert str(defaults[field]) == value, (
                f"chart {name}={value}, operator {defaults[field]}"
            )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert container["image"].endswith(f":{project['version']}")
