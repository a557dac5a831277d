"""Kueue's verdict on a queued training Job, read from its Workload.

A run with ``scheduling.queueName`` gets a suspended Job that Kueue admits by unsuspending
it. While it waits, Kueue says why on the Job's Workload (``kueue.x-k8s.io/v1beta2``), in its
``QuotaReserved`` and ``Admitted`` conditions, e.g. ``couldn't assign flavors to pod set
main: insufficient quota for nvidia.com/gpu in flavor default-flavor, ...``. The run's
Queued condition carries that text, so ``kubectl get qft`` says what the run waits for.
Pure: :mod:`kube` finds the Workload, this module reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WORKLOAD_GROUP = "kueue.x-k8s.io"
WORKLOAD_VERSION = "v1beta2"
WORKLOAD_PLURAL = "workloads"
# The condition types that say why a Workload is not admitted yet, most telling first.
PENDING_CONDITIONS = ("QuotaReserved", "Admitted")


@dataclass(frozen=True)
class QueueWait:
    """Why Kueue has not admitted the Job yet: its Workload and the condition's words."""

    workload: str
    reason: str
    message: str

    def describe(self) -> str:
        return f"Kueue: {self.message}" if self.message else f"Kueue: {self.reason}"


def owned_by_job(workload: Mapping[str, Any], job: str) -> bool:
    """Whether the Workload is the one Kueue made for the Job named ``job``."""
    owners = (workload.get("metadata") or {}).get("ownerReferences") or []
    return any(
        o.get("kind") == "Job" and o.get("apiVersion") == "batch/v1" and o.get("name") == job
        for o in owners
    )


def workload_of(workloads: Iterable[Mapping[str, Any]], job: str) -> Mapping[str, Any] | None:
    """The Workload of Job ``job`` among a namespace's Workloads (None: not made yet)."""
    return next((w for w in workloads if owned_by_job(w, job)), None)


def read_wait(workload: Mapping[str, Any]) -> QueueWait | None:
    """Kueue's reason for holding the Workload, or None when it is admitted or says nothing."""
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    admitted = conditions.get("Admitted")
    if admitted is not None and admitted.get("status") == "True":
        return None
    name = str((workload.get("metadata") or {}).get("name") or "")
    for type_ in PENDING_CONDITIONS:
        found = conditions.get(type_)
        if found is not None and found.get("status") == "False":
            reason = str(found.get("reason") or type_)
            return QueueWait(workload=name, reason=reason, message=str(found.get("message") or ""))
    return None
