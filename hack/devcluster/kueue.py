"""Kueue's manager as an optional component of the local control plane.

The control plane has no pod network, so the manager runs as a local process (like the
controller-manager) with a Kueue `Configuration` file, serving its webhooks on 127.0.0.1.
Its CRDs and webhook configurations are the release's own (`config/components/` of the
`sigs.k8s.io/kueue` module, copied next to the binary by `hack/build-cluster.sh kueue`),
rewritten only where a Service would be used in a cluster: every admission and conversion
webhook points at `https://127.0.0.1:<port>/<path>` with the dev CA as caBundle, and the
serving certificate is issued by that CA (Kueue's internal certificate management is off).

    cp = ControlPlane.start(workdir, with_kueue=True)    # or: hack/cluster.py up --with kueue
    kueue.start(cp)                                      # or add it to a running one

The `build_*` functions are pure: the queue objects tests and `up --with kueue` create.
YAML is read with PyYAML, imported only here, so the rest of the launcher stays stdlib-only.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devcluster.api import Api, http_ok
from devcluster.binaries import BinariesMissingError, read_versions
from devcluster.pki import write_serving_cert

if TYPE_CHECKING:
    from devcluster.controlplane import ControlPlane

NAME = "kueue"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
NAMESPACE = "kueue-system"
MANIFESTS = "kueue-manifests"  # in the binary directory, written by hack/build-cluster.sh
GPU = "nvidia.com/gpu"
# Webhook configuration names as the release's kustomization prefixes them.
WEBHOOK_PREFIX = "kueue-"
# Without internal certificate management the manager loads a metrics serving pair from this
# fixed path at start (cmd/kueue/main.go), even with its metrics listener off.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
BUILD_HINT = "build it with `bash hack/build-cluster.sh kueue` (several minutes the first time)"


def version() -> str:
    return read_versions()["KUEUE_VERSION"]


def require(bin_dir: Path) -> Path:
    """The manifests directory; BinariesMissingError naming the build command if absent."""
    manifests = bin_dir / MANIFESTS
    stamp = bin_dir / f".{NAME}.version"
    stamped = stamp.read_text().strip() if stamp.exists() else ""
    if not (bin_dir / NAME).exists() or not (manifests / "webhook/manifests.yaml").exists():
        raise BinariesMissingError(f"Kueue's manager is not in {bin_dir}; {BUILD_HINT}")
    if stamped != version():
        raise BinariesMissingError(
            f"{bin_dir / NAME} is Kueue {stamped or '?'}, hack/versions.env pins {version()}; "
            + BUILD_HINT
        )
    return manifests


def _load_all(path: Path) -> list[dict[str, Any]]:
    import yaml  # only Kueue's YAML manifests need it

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _client_config(base_url: str, path: str, ca_bundle: str) -> dict[str, str]:
    return {"url": f"{base_url}{path}", "caBundle": ca_bundle}


def build_crds(manifests: Path, base_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs; those the release converts through its webhook call base_url/convert.

    Which CRDs convert is read from the release's crd/kustomization.yaml patches.
    """
    crd_dir = manifests / "crd"
    (kustomization,) = _load_all(crd_dir / "kustomization.yaml")
    conversions: dict[str, dict[str, Any]] = {}
    for patch in kustomization.get("patches") or []:
        for doc in _load_all(crd_dir / patch["path"]):
            conversion = (doc.get("spec") or {}).get("conversion")
            if conversion and conversion.get("strategy") == "Webhook":
                conversions[doc["metadata"]["name"]] = conversion
    crds = []
    for path in sorted((crd_dir / "bases").glob("*.yaml")):
        for crd in _load_all(path):
            if conversion := conversions.get(crd["metadata"]["name"]):
                conversion = copy.deepcopy(conversion)
                webhook = conversion["webhook"]
                service_path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = _client_config(base_url, service_path, ca_bundle)
                crd["spec"]["conversion"] = conversion
            crds.append(crd)
    return crds


def build_webhook_configurations(
    manifests: Path, base_url: str, ca_bundle: str
) -> list[dict[str, Any]]:
    """The release's Mutating/ValidatingWebhookConfigurations, each webhook at base_url."""
    configs = []
    for doc in _load_all(manifests / "webhook" / "manifests.yaml"):
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = WEBHOOK_PREFIX + doc["metadata"]["name"]
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = _client_config(base_url, path, ca_bundle)
        configs.append(doc)
    return configs


def build_configuration(
    *, webhook_port: int, health_port: int, cert_dir: Path, frameworks: tuple[str, ...]
) -> dict[str, Any]:
    """The manager's Configuration: local webhook server, no leader election, no metrics."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(frameworks)},
    }


def build_resource_flavor(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name}}


def build_cluster_queue(
    name: str, *, flavor: str, gpus: int, cpu: str = "384", memory: str = "4Ti"
) -> dict[str, Any]:
    """A ClusterQueue for every namespace with `gpus` of nvidia.com/gpu (and cpu/memory)."""
    quotas = {"cpu": cpu, "memory": memory, GPU: str(gpus)}
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": list(quotas),
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [
                                {"name": r, "nominalQuota": q} for r, q in quotas.items()
                            ],
                        }
                    ],
                }
            ],
        },
    }


def build_local_queue(namespace: str, name: str, cluster_queue: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterQueue": cluster_queue},
    }


def _established(api: Api, name: str) -> bool:
    status, body = api.request(
        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    )
    if status != 200:
        return False
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _apply(api: Api, collection: str, obj: dict[str, Any]) -> None:
    """Create obj, or replace it (keeping its resourceVersion) when it exists."""
    status, body = api.request("POST", collection, obj)
    if status == 409:
        path = f"{collection}/{obj['metadata']['name']}"
        _, current = api.request("GET", path)
        obj = {**obj, "metadata": {**obj["metadata"], **_version_of(current)}}
        status, body = api.request("PUT", path, obj)
    if status not in (200, 201):
        raise RuntimeError(f"apply {collection}/{obj['metadata']['name']}: HTTP {status}: {body}")


def _version_of(current: Any) -> dict[str, str]:
    version = (
        (current.get("metadata") or {}).get("resourceVersion")
        if isinstance(current, dict)
        else None
    )
    return {"resourceVersion": version} if version else {}


def start(
    cp: ControlPlane,
    *,
    timeout: float = 120.0,
    frameworks: tuple[str, ...] = ("batch/job",),
    say: Callable[[str], None] | None = None,
) -> None:
    """Install Kueue's CRDs and webhooks into cp and start its manager; return once ready.

    The manager is one more of cp's processes (stopped with it, shown by `status`).
    """
    from devcluster.controlplane import ClusterError, free_ports  # it imports this module

    began = time.monotonic()
    deadline = began + timeout
    manifests = require(cp.bin_dir)
    api = Api(cp.server, cp.token, cp.ca_file)
    webhook_port, health_port = free_ports(2)
    cp.ports.update({"kueue_webhook": webhook_port, "kueue_health": health_port})
    kdir = cp.workdir / NAME
    cert_dir = kdir / "certs"
    write_serving_cert(
        cert_dir, ca_cert=cp.ca_file, ca_key=cp.ca_file.parent / "ca.key", common_name="kueue"
    )
    try:
        _install_metrics_pair(cert_dir)
    except OSError as err:
        raise ClusterError(
            f"Kueue's manager reads its metrics certificate from {METRICS_CERT_DIR}, which "
            f"could not be written ({err}); run as a user who may create it"
        ) from None
    ca_bundle = base64.b64encode(cp.ca_file.read_bytes()).decode()
    base_url = f"https://127.0.0.1:{webhook_port}"
    config_file = kdir / "config.yaml"
    config = build_configuration(
        webhook_port=webhook_port, health_port=health_port, cert_dir=cert_dir, frameworks=frameworks
    )
    config_file.write_text(json.dumps(config, indent=2) + "\n")

    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    crds = build_crds(manifests, base_url, ca_bundle)
    try:
        for crd in crds:
            _apply(api, crd_path, crd)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        api.create("/api/v1/namespaces", namespace)
        for hooks in build_webhook_configurations(manifests, base_url, ca_bundle):
            kind = hooks["kind"].lower() + "s"  # mutatingwebhookconfigurations, validating...
            _apply(api, f"/apis/admissionregistration.k8s.io/v1/{kind}", hooks)
    except RuntimeError as err:
        raise ClusterError(f"installing Kueue's manifests: {err}") from None
    names = [crd["metadata"]["name"] for crd in crds]
    established = lambda: all(_established(api, n) for n in names)  # noqa: E731
    cp._wait("kube-apiserver", established, deadline)
    argv = [
        str(cp.bin_dir / NAME),
        f"--config={config_file}",
        f"--kubeconfig={cp.kubeconfig}",
        # the visibility API is an aggregated API server: nothing here would route to it
        "--feature-gates=VisibilityOnDemand=false",
    ]
    cp._spawn(NAME, argv)
    cp._wait(NAME, lambda: http_ok(f"http://127.0.0.1:{health_port}/readyz"), deadline)
    # Ready means the webhook server listens; wait until the API server reaches it too.
    probe = build_resource_flavor("qwenft-devcluster-probe")
    cp._wait(NAME, lambda: _dry_run_ok(api, probe), deadline)
    cp.save()
    if say is not None:
        say(f"Kueue {version()} ready in {time.monotonic() - began:.1f}s (webhooks at {base_url})")


def _install_metrics_pair(cert_dir: Path) -> None:
    """Put a valid key pair (this cluster's webhook pair) where the manager insists on one."""
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        target = METRICS_CERT_DIR / name
        staged = target.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes((cert_dir / name).read_bytes())
        staged.chmod(0o600)
        os.replace(staged, target)  # atomic: a manager starting elsewhere never reads half


def _dry_run_ok(api: Api, obj: dict[str, Any]) -> bool:
    """True when a dry-run create passes Kueue's admission webhooks."""
    status, _ = api.request("POST", f"/apis/{API_VERSION}/resourceflavors?dryRun=All", obj)
    return status in (200, 201)


def create_default_queues(cp: ControlPlane, *, gpus: int = 8, local_queue: str = "team-a") -> None:
    """A ResourceFlavor, a ClusterQueue with `gpus` GPUs and LocalQueue `local_queue` in default.

    What `hack/cluster.py up --with kueue` sets up, so `examples/kueue-queued.yaml` runs.
    """
    api = Api(cp.server, cp.token, cp.ca_file)
    api.create(f"/apis/{API_VERSION}/resourceflavors", build_resource_flavor("default-flavor"))
    queue = build_cluster_queue("cluster-queue", flavor="default-flavor", gpus=gpus)
    api.create(f"/apis/{API_VERSION}/clusterqueues", queue)
    lq = build_local_queue("default", local_queue, "cluster-queue")
    api.create(f"/apis/{API_VERSION}/namespaces/default/localqueues", lq)
