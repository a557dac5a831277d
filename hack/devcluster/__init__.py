"""A real local Kubernetes control plane for tests and development.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes and pod
lifecycles) run as local processes built by hack/build-cluster.sh. `hack/cluster.py` is the
command line; tests use `ControlPlane.start(workdir)` and `.stop()` directly.
"""

from devcluster.binaries import BinariesMissingError
from devcluster.controlplane import ClusterError, ControlPlane

__all__ = ["BinariesMissingError", "ClusterError", "ControlPlane"]
