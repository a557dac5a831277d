"""Helpers shared by the chart tests (and the chart's e2e install test): paths, helm calls,
and the restricted Pod Security Standard check."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qwenft-operator"
CRD_FILE = ROOT / "crds" / "finetune.qwenft.io_qwenfinetunes.yaml"
MODEL_SERVER_CRD_FILE = ROOT / "crds" / "finetune.qwenft.io_qwenmodelservers.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# The `render` fixture: render(values=[...], sets=[...], api_versions=[...]) -> objects.
Render = Callable[..., list[dict[str, Any]]]
# The release name the README uses; with it every object is called plain "qwenft-operator".
RELEASE = "qwenft-operator"


def run_helm(helm: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run helm and return the finished process (never raises on a non-zero exit)."""
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def template_args(
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    namespace: str = "qwenft-system",
) -> list[str]:
    """Arguments of `helm template` of the chart with the given values."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    return args


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every Pod and pod template among the objects."""
    found = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            found.append((name, obj["spec"]))
        elif obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
            found.append((name, obj["spec"]["template"]["spec"]))
    return found


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the "restricted" Pod Security Standard (empty: none).

    The checks of https://kubernetes.io/docs/concepts/security/pod-security-standards/
    (baseline and restricted) that a pod spec can fail.
    """
    problems = []
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{key} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} has type {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("privileged"):
            problems.append(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where} does not set allowPrivilegeEscalation: false")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where} does not run as non-root")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where} runAsUser is 0")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where} does not drop ALL capabilities")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where} adds capabilities {caps['add']}")
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where} has no RuntimeDefault/Localhost seccomp profile")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            problems.append(f"{where} uses a hostPort")
    return problems
