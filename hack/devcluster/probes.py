"""Readiness checks of single components, for waiting after one is restarted or resumed.

The endpoints are the ones `ControlPlane.start` waits on: etcd `/health`, kube-apiserver
`/readyz`, the controller-manager's and scheduler's `/healthz`. kwok has no health port here;
it counts as ready once it has renewed every node Lease after it started. That takes up to
the Lease duration (40 s, hack/kwok/kwok.yaml): a new kwok process has a new identity and
takes over a Lease only once the old holder's has expired, and until then it plays no Stage
on that node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from devcluster.api import Api, http_ok, insecure_context

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def readiness(
    component: str, *, ports: Mapping[str, int], api: Api, since: datetime
) -> Callable[[], bool] | None:
    """The readiness check of ``component``, or None when it has none (running is enough).

    ``since`` is when the component (re)started, for checks that need its own work seen.
    """
    tls = insecure_context()
    checks: dict[str, Callable[[], bool]] = {
        "etcd": lambda: http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
        "kube-apiserver": lambda: api.request("GET", "/readyz")[0] == 200,
        "kube-controller-manager": lambda: http_ok(
            f"https://127.0.0.1:{ports['controller_manager']}/healthz", tls
        ),
        "kube-scheduler": lambda: http_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz", tls),
        "kwok": lambda: leases_renewed_since(api, since),
    }
    return checks.get(component)


def leases_renewed_since(api: Api, since: datetime) -> bool:
    """True when there are node Leases and every one was renewed after ``since``."""
    status, body = api.request("GET", LEASES)
    if status != 200:
        return False
    renewed = [(lease.get("spec") or {}).get("renewTime") for lease in body.get("items", [])]
    return bool(renewed) and all(
        value is not None and datetime.fromisoformat(value) > since for value in renewed
    )
