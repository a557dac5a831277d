"""Command lines of the five components, as pure functions of ports and paths.

Kept apart from the launcher so the flags can be read (and tested) in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from devcluster.binaries import KWOK_DIR
from devcluster.pki import Pki

SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_CONFIGS = ("kwok.yaml", "node-stages.yaml", "pod-stages.yaml")
# The fake nodes' InternalIP (kwok.yaml's options.nodeIP): the API server reaches their
# "kubelet", kwok's own server, there.
KWOK_NODE_IP = "127.240.0.1"
# In the work dir: what every fake pod's containers log (a ClusterLogs, followed), and the
# kwok configuration that says so.
POD_LOG = "pod.log"
KWOK_LOGS_CONFIG = "kwok-logs.yaml"


@dataclass(frozen=True)
class Layout:
    """Everything a command line needs: binaries, the work dir, its PKI, ports, kubeconfig."""

    bin_dir: Path
    workdir: Path
    pki: Pki
    kubeconfig: Path
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    kwok_port: int


def etcd(lay: Layout) -> list[str]:
    client = f"http://127.0.0.1:{lay.etcd_port}"
    peer = f"http://127.0.0.1:{lay.etcd_peer_port}"
    return [
        str(lay.bin_dir / "etcd"),
        "--name=qwenft",
        f"--data-dir={lay.workdir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=qwenft={peer}",
        "--unsafe-no-fsync",  # a test cluster: losing data on power loss is fine
        "--log-level=warn",
    ]


def kube_apiserver(lay: Layout) -> list[str]:
    p = lay.pki
    return [
        str(lay.bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{lay.etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        # the lease reconciler refuses a loopback address for the `kubernetes` Service
        # endpoints; nothing runs in-cluster here, so that Service needs none
        "--endpoint-reconciler-type=none",
        f"--secure-port={lay.apiserver_port}",
        f"--cert-dir={lay.workdir / 'apiserver'}",
        f"--tls-cert-file={p.server_cert}",
        f"--tls-private-key-file={p.server_key}",
        f"--client-ca-file={p.ca_cert}",
        f"--token-auth-file={p.token_file}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        # fake nodes have no resolvable hostname; their InternalIP reaches kwok's server
        "--kubelet-preferred-address-types=InternalIP",
    ]


def kube_controller_manager(lay: Layout) -> list[str]:
    p = lay.pki
    return [
        str(lay.bin_dir / "kube-controller-manager"),
        f"--kubeconfig={lay.kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={lay.controller_manager_port}",
        f"--cert-dir={lay.workdir / 'controller-manager'}",
        f"--service-account-private-key-file={p.sa_key}",
        f"--root-ca-file={p.ca_cert}",
        "--use-service-account-credentials=true",
        "--controllers=*",
        "--leader-elect=false",
        "--cluster-name=qwenft-dev",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ]


def write_scheduler_config(lay: Layout) -> Path:
    """The KubeSchedulerConfiguration (JSON is YAML): our kubeconfig, no leader election."""
    path = lay.workdir / "scheduler.yaml"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(lay.kubeconfig)},
                "leaderElection": {"leaderElect": False},
            },
            indent=2,
        )
    )
    return path


def kube_scheduler(lay: Layout) -> list[str]:
    return [
        str(lay.bin_dir / "kube-scheduler"),
        f"--config={lay.workdir / 'scheduler.yaml'}",
        "--bind-address=127.0.0.1",
        f"--secure-port={lay.scheduler_port}",
        f"--cert-dir={lay.workdir / 'scheduler'}",
    ]


def write_kwok_logs_config(lay: Layout) -> Path:
    """A ClusterLogs serving the work dir's ``pod.log`` (empty at first) as every pod's logs."""
    (lay.workdir / POD_LOG).touch()
    path = lay.workdir / KWOK_LOGS_CONFIG
    logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": "every-pod"},
        "spec": {"logs": [{"logsFile": str(lay.workdir / POD_LOG), "follow": True}]},
    }
    path.write_text(json.dumps(logs, indent=2))
    return path


def kwok(lay: Layout) -> list[str]:
    p = lay.pki
    return [
        str(lay.bin_dir / "kwok"),
        f"--kubeconfig={lay.kubeconfig}",
        *(f"--config={KWOK_DIR / name}" for name in KWOK_CONFIGS),
        f"--config={lay.workdir / KWOK_LOGS_CONFIG}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        # the nodes' kubelet endpoint (HTTPS; the API server does not check its certificate)
        f"--server-address={KWOK_NODE_IP}:{lay.kwok_port}",
        f"--node-port={lay.kwok_port}",
        f"--tls-cert-file={p.server_cert}",
        f"--tls-private-key-file={p.server_key}",
    ]
