"""Reading Kueue's verdict from a Workload: which condition speaks, which Workload is the Job's.

The Workloads are shaped as Kueue v0.17 writes them (``kueue.x-k8s.io/v1beta2``); the e2e
test tests/e2e/test_kueue.py checks the same reading against the real Kueue manager.
"""

from __future__ import annotations

from typing import Any

from qwenft_operator.queueing import QueueWait, owned_by_job, read_wait, workload_of

NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
    "in flavor default-flavor, 4 more needed"
)


def workload(name: str, job: str, *conditions: dict[str, str]) -> dict[str, Any]:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "u", "controller": True}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "status": {"conditions": list(conditions)},
    }


def test_pending_workload_gives_kueues_reason_and_message() -> None:
    held = workload(
        "job-a-train-1",
        "a-train",
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": NO_QUOTA},
    )
    assert read_wait(held) == QueueWait("job-a-train-1", "Pending", NO_QUOTA)
    assert read_wait(held).describe() == f"Kueue: {NO_QUOTA}"  # type: ignore[union-attr]


def test_admitted_workload_holds_nothing() -> None:
    admitted = workload(
        "job-a-train-1",
        "a-train",
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "ok"},
    )
    assert read_wait(admitted) is None
    assert read_wait(workload("job-a-train-1", "a-train")) is None  # no verdict yet


def test_admission_check_wait_is_reported_from_admitted_false() -> None:
    waiting = workload(
        "w",
        "a-train",
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"},
        {"type": "Admitted", "status": "False", "reason": "NoChecks", "message": ""},
    )
    assert read_wait(waiting) == QueueWait("w", "NoChecks", "")
    assert read_wait(waiting).describe() == "Kueue: NoChecks"  # type: ignore[union-attr]


def test_the_jobs_own_workload_is_found_by_owner() -> None:
    mine = workload("job-a-train-1", "a-train")
    other = workload("job-b-train-2", "b-train")
    pod_owned = workload("pod-a-train-3", "a-train")
    pod_owned["metadata"]["ownerReferences"][0]["kind"] = "Pod"
    assert workload_of([other, pod_owned, mine], "a-train") is mine
    assert workload_of([other], "a-train") is None
    assert not owned_by_job({"metadata": {}}, "a-train")
