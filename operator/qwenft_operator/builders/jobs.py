"""The Job shape every step of a run shares: one pod template, and a pod failure policy.

Validation, training and merge are Jobs; they differ in their pods and in which exit
codes mean "retrying can't help".
"""

from __future__ import annotations

from typing import Any

from qwenft_operator import labels
from qwenft_operator.builders import pods
from qwenft_operator.parsed_run import Run


def build_job(
    run: Run,
    *,
    name: str,
    component: labels.Component,
    pod_spec: dict[str, Any],
    backoff_limit: int,
    fail_on_exit_codes: list[int],
    ignore_exit_codes: list[int] | None = None,
    extra_labels: dict[str, str] | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job around ``pod_spec``.

    Its ``podFailurePolicy`` ignores disruptions (preemption, eviction, node drain: the pod
    is recreated without counting against ``backoff_limit``) and fails the Job at once
    when the first container exits with one of ``fail_on_exit_codes``, the codes that mean
    a retry can't help. A container exiting with one of ``ignore_exit_codes`` (a trainer
    that stopped on SIGTERM with a complete checkpoint) is replaced without counting either,
    also when nothing marked its pod as disrupted (a deleted pod, a node shutdown).
    """
    container = pod_spec["containers"][0]["name"]
    pod_labels = labels.build_labels(run.name, component)
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    ]
    if ignore_exit_codes:
        codes = {"containerName": container, "operator": "In", "values": ignore_exit_codes}
        rules.append({"action": "Ignore", "onExitCodes": codes})
    codes = {"containerName": container, "operator": "In", "values": fail_on_exit_codes}
    rules.append({"action": "FailJob", "onExitCodes": codes})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": pods.object_meta(run, name, component, extra_labels=extra_labels),
        "spec": {
            "backoffLimit": backoff_limit,
            **(extra_spec or {}),
            "podFailurePolicy": {"rules": rules},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"restartPolicy": "Never", **pod_spec},
            },
        },
    }
