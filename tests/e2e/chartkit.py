"""Helpers for the chart's e2e tests: helm and kubectl calls, installing the chart into a
namespace that enforces the "restricted" Pod Security Standard, and a kubeconfig that
authenticates as the chart's ServiceAccount (a token from the TokenRequest API), and a wait
until the API server's authorizer applies the chart's RBAC to that account.

Not a test module; `test_chart_install` and `test_monitoring` import it (pytest puts this
directory on `sys.path`). helm and kubectl are on PATH once the `cluster` fixture runs.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import yaml
from operatorkit import wait_until
from qwenft_operator import kube, permissions

CHART = Path(__file__).resolve().parents[2] / "charts" / "qwenft-operator"
CRD_NAME = "qwenfinetunes.finetune.qwenft.io"
# An API server 403 message, possibly with JSON-escaped quotes: (verb, resource, namespace).
FORBIDDEN = re.compile(
    r'cannot (\w+) resource \\?"([^"\\]+)\\?"(?: in API group \\?"[^"\\]*\\?")?'
    r'(?: in the namespace \\?"([^"\\]+)\\?")?'
)
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm/kubectl without raising."""
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=180)


def ok(*argv: str, stdin: str | None = None) -> str:
    """Run helm/kubectl; a non-zero exit fails with the command's output."""
    done = run(*argv, stdin=stdin)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def denials(log: str) -> set[tuple[str, str, str]]:
    """Every (verb, resource, namespace) the API server refused, from an operator log."""
    return {(verb, resource, namespace) for verb, resource, namespace in FORBIDDEN.findall(log)}


def release_name() -> str:
    return f"qwenft-{uuid.uuid4().hex[:6]}"


def fullname(release: str) -> str:
    """The chart's object names for a release (release name + chart name)."""
    return f"{release}-qwenft-operator"


def helm_install(release: str, namespace: str, watched: list[str], *sets: str) -> None:
    """Install the chart; watched=[] is cluster-wide mode.

    --take-ownership: another test may have applied the same CRD already.
    """
    args = ["helm", "install", release, str(CHART), "--namespace", namespace, "--take-ownership"]
    if watched:
        args += ["--set", f"operator.watchNamespaces={{{','.join(watched)}}}"]
    for item in sets:
        args += ["--set", item]
    ok(*args)


def helm_uninstall(release: str, namespace: str) -> None:
    run("helm", "uninstall", release, "--namespace", namespace, "--wait")


def service_account_kubeconfig(admin: Path, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for `account`, with a one-hour token from the TokenRequest API."""
    token = ok(
        "kubectl", "--kubeconfig", str(admin), "create", "token", account,
        "--namespace", namespace, "--duration", "1h",
    ).strip()  # fmt: skip
    config = yaml.safe_load(admin.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    user = f"system:serviceaccount:{namespace}:{account}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": user}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


def wait_for_grants(kubeconfig: Path, namespaces: list[str]) -> None:
    """Wait until the API server grants ``kubeconfig``'s account every watch the operator
    checks at start-up in ``namespaces`` ([]: cluster-wide). The authorizer sees RBAC
    objects through informers, a moment after helm created them; an operator started
    before would exit 2."""
    clients = kube.Clients.connect(str(kubeconfig))
    try:
        wait_until(
            "the chart's RBAC to take effect",
            lambda: not kube.denied(clients, permissions.required(namespaces)),
        )
    finally:
        clients.close()
