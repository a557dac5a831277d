"""A killed operator picks up where it stopped and never makes a second copy of a child.

Covers: one run; the operator is killed (SIGKILL) as soon as the run reaches each of
Validating, Training, Merging and Deploying (or a later phase, as Deploying may pass
quicker than a poll), and started again; the run still reaches
Ready, and ends with exactly one child of each kind (three Jobs, one ConfigMap, two
Services, one Deployment) and one pod per Job; the operator exposes its metrics
(runs by phase, phase transitions) on QWENFT_METRICS_PORT.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from operatorkit import (
    OperatorProcess,
    children,
    create_run,
    ensure_priority_classes,
    example,
    install_crd,
    phase_of,
    prepare_namespace,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.e2e
RUN = "support-lora"
PHASES = ("Validating", "Training", "Merging", "Deploying")
ORDER = ("Pending", *PHASES, "Ready")


def test_operator_killed_at_each_phase_makes_each_child_once(
    kube_client: client.ApiClient, kubeconfig_path: Path, e2e_namespace: str, tmp_path: Path
) -> None:
    install_crd(kube_client)
    ensure_priority_classes(kube_client)
    prepare_namespace(kube_client, e2e_namespace)
    operator = OperatorProcess(kubeconfig_path, tmp_path)
    operator.start()
    try:
        create_run(kube_client, e2e_namespace, example("lora-single-gpu"))
        killed_in = []
        for target in PHASES:

            def reached(target: str = target) -> str | None:
                phase = phase_of(kube_client, e2e_namespace, RUN)
                at_or_after = phase in ORDER and ORDER.index(phase) >= ORDER.index(target)
                return phase if at_or_after else None

            killed_in.append(wait_until(f"phase {target} or later", reached, timeout=60))
            operator.kill()
            operator.start()
        # Deploying can last less than a poll here (kwok readies pods at once); the rest
        # each wait for a Job, so the operator died in each of them.
        assert killed_in[:3] == ["Validating", "Training", "Merging"], killed_in
        wait_phase(kube_client, e2e_namespace, RUN, "Ready", timeout=60)
        assert children(kube_client, e2e_namespace, RUN) == {
            "Job": [f"{RUN}-merge", f"{RUN}-train", f"{RUN}-validate"],
            "ConfigMap": [f"{RUN}-config"],
            "Service": [f"{RUN}-serve"],  # one node: no rendezvous Service
            "Deployment": [f"{RUN}-serve"],
        }
        pods = (
            client.CoreV1Api(kube_client)
            .list_namespaced_pod(e2e_namespace, label_selector=f"finetune.qwenft.io/name={RUN}")
            .items
        )
        components = sorted(p.metadata.labels["finetune.qwenft.io/component"] for p in pods)
        assert components == ["merge", "serve", "train", "validate"]
        url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'qwenft_operator_runs{phase="Ready"}' in metrics
        assert "qwenft_operator_reconcile_duration_seconds_count" in metrics
    finally:
        operator.stop()
