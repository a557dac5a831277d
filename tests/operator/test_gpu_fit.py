"""The GPU-fit check (qwenft_operator.gpu_fit) in the reconcile decision.

Covers, with the validation Job done and no training Job yet: a run that fits gets FitsGPU
True (GpuMemoryFits) with the estimate and its training Job; a tight one (above 90 %) gets
GpuMemoryTight, a Warning Event once, and its training Job; one that can't fit fails
(phase Failed, FitsGPU False GpuMemoryExceeded, the numbers and the fixes that fit) and no
Job is created; unknown GPU memory or an unknown model gives FitsGPU Unknown and training
goes on; spec.resources.gpuMemory wins over the node labels; the smallest
nvidia.com/gpu.memory label of the matching nodes is the limit; the shape comes from the
validator's termination message before the table of known hub ids; a CPU run isn't
checked; the node lookup is asked for only between validation and training; the pod parser
keeps the termination message of a container that exited 0.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from qwenft_operator import conditions as cond
from qwenft_operator import gpu_fit
from qwenft_operator.actions import CreateChild, EmitEvent
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.observe import JobFacts, PodFacts, parse_pod
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.reconcile import Observed, decide, needs_gpu_memory
from qwenft_operator.status import QwenFineTuneStatus
from qwenft_trainer.fit_estimate import GIB, estimate_memory
from qwenft_trainer.model_shapes import known_config

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEVEN_B = known_config("Qwen/Qwen2.5-7B") or {}


def make_run(example: str = "lora-single-gpu", **resources: Any) -> Run:
    body = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"]["resources"].update(copy.deepcopy(resources))
    return Run.from_body(body)


def validated(run: Run, report: dict[str, Any] | None = None, **extra: Any) -> Observed:
    """The validation Job and pod done; the pod's termination message is ``report``."""
    pod = PodFacts(
        name=f"{run.names.validate_job}-x",
        component="validate",
        phase="Succeeded",
        report=json.dumps(report) if report is not None else "",
    )
    job = JobFacts(name=run.names.validate_job, state="Succeeded", succeeded=1)
    return Observed(validate_job=job, pods=(pod,), **extra)


def validating() -> QwenFineTuneStatus:
    return QwenFineTuneStatus(phase=Phase.VALIDATING)


def created(decision: Any) -> list[str]:
    return [f"{a.kind} {a.name}" for a in decision.actions if isinstance(a, CreateChild)]


def fits_gpu(decision: Any) -> Any:
    return cond.get_condition(decision.status.conditions, cond.FITS_GPU)


def estimate_of(run: Run, config: dict[str, Any]) -> int:
    gpus = run.spec.resources.nodes * run.spec.resources.gpus_per_node
    return estimate_memory(config, build_train_config(run), gpus).total


def test_a_run_that_fits_trains_with_its_estimate_in_the_condition() -> None:
    run = make_run(gpuMemory="80Gi")
    decision = decide(run, validating(), validated(run, {"base_config": SEVEN_B}), NOW)
    found = fits_gpu(decision)
    assert found is not None and found.status == "True" and found.reason == cond.GPU_MEMORY_FITS
    assert "GiB per GPU" in found.message and "spec.resources.gpuMemory 80Gi" in found.message
    assert f"Job {run.names.train_job}" in created(decision)
    assert not [a for a in decision.actions if isinstance(a, EmitEvent) and a.type == "Warning"]


def test_a_tight_run_trains_with_a_warning_event_once() -> None:
    run = make_run()
    total = estimate_of(run, SEVEN_B)
    limit = int(total / 0.95)
    tight = make_run(gpuMemory=str(limit))
    decision = decide(tight, validating(), validated(tight, {"base_config": SEVEN_B}), NOW)
    found = fits_gpu(decision)
    assert found is not None and found.status == "True" and found.reason == cond.GPU_MEMORY_TIGHT
    assert f"Job {tight.names.train_job}" in created(decision)
    warnings = [a for a in decision.actions if isinstance(a, EmitEvent) and a.type == "Warning"]
    assert [w.reason for w in warnings] == [cond.GPU_MEMORY_TIGHT]
    assert "95%" in warnings[0].message
    again = decide(tight, decision.status, validated(tight, {"base_config": SEVEN_B}), NOW)
    assert not [a for a in again.actions if isinstance(a, EmitEvent) and a.type == "Warning"]


def test_a_run_that_cannot_fit_fails_before_any_gpu_is_requested() -> None:
    run = make_run(gpuMemory="16Gi")
    decision = decide(run, validating(), validated(run, {"base_config": SEVEN_B}), NOW)
    assert decision.status.phase == Phase.FAILED
    found = fits_gpu(decision)
    assert found is not None and found.status == "False"
    assert found.reason == cond.GPU_MEMORY_EXCEEDED
    assert "more than the 16.0 GiB GPU memory" in found.message
    assert "method: qlora" in found.message  # the 4-bit base fits in 16 GiB
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    assert failed is not None and failed.reason == cond.GPU_MEMORY_EXCEEDED
    assert created(decision) == []
    reasons = [a.reason for a in decision.actions if isinstance(a, EmitEvent)]
    assert cond.GPU_MEMORY_EXCEEDED in reasons


def test_unknown_gpu_memory_lets_the_run_train() -> None:
    run = make_run()
    decision = decide(run, validating(), validated(run, {"base_config": SEVEN_B}), NOW)
    found = fits_gpu(decision)
    assert found is not None and found.status == "Unknown"
    assert found.reason == cond.GPU_MEMORY_UNKNOWN and "spec.resources.gpuMemory" in found.message
    assert f"Job {run.names.train_job}" in created(decision)


def test_unknown_model_lets_the_run_train() -> None:
    run = make_run("full-finetune", gpuMemory="80Gi")  # a model on a PVC, no report
    decision = decide(run, validating(), validated(run), NOW)
    found = fits_gpu(decision)
    assert found is not None and found.status == "Unknown" and "shape" in found.message
    assert decision.status.phase != Phase.FAILED


def test_node_labels_give_the_limit_and_the_spec_wins() -> None:
    small = gpu_fit.gpu_memory_of_nodes(
        [{"nvidia.com/gpu.memory": "81920"}, {"nvidia.com/gpu.memory": "16384"}, {}]
    )
    assert small is not None and small.bytes == 16 * GIB and "16384" in small.source
    assert gpu_fit.gpu_memory_of_nodes([{}, {"nvidia.com/gpu.memory": "n/a"}]) is None
    run = make_run()
    failing = decide(
        run, validating(), validated(run, {"base_config": SEVEN_B}, gpu_memory=small), NOW
    )
    assert failing.status.phase == Phase.FAILED and "node label" in fits_gpu(failing).message
    roomy = make_run(gpuMemory="141Gi")
    passing = decide(
        roomy, validating(), validated(roomy, {"base_config": SEVEN_B}, gpu_memory=small), NOW
    )
    assert fits_gpu(passing).status == "True"


def test_the_reported_shape_comes_before_the_known_hub_shape() -> None:
    run = make_run(gpuMemory="40Gi")  # the manifest names Qwen/Qwen2.5-7B-Instruct
    big = known_config("Qwen/Qwen2.5-72B") or {}
    from_report = decide(run, validating(), validated(run, {"base_config": big}), NOW)
    assert from_report.status.phase == Phase.FAILED
    from_table = decide(run, validating(), validated(run), NOW)  # no report: the table
    assert fits_gpu(from_table).status == "True"


def test_a_cpu_run_is_not_checked() -> None:
    run = make_run(gpusPerNode=0, gpuMemory="1Gi")
    decision = decide(run, validating(), validated(run, {"base_config": SEVEN_B}), NOW)
    assert fits_gpu(decision) is None and decision.status.phase != Phase.FAILED


def test_nodes_are_looked_up_only_between_validation_and_training() -> None:
    run = make_run()
    assert needs_gpu_memory(run, validated(run))
    assert not needs_gpu_memory(run, Observed())
    assert not needs_gpu_memory(make_run(gpuMemory="80Gi"), validated(run))
    trained = validated(run, train_job=JobFacts(name=run.names.train_job, state="Active"))
    assert not needs_gpu_memory(run, trained)


def test_pod_parser_keeps_the_report_of_a_container_that_exited_zero() -> None:
    message = json.dumps({"ok": True, "base_config": SEVEN_B})
    body = {
        "metadata": {
            "name": "r-validate-x",
            "labels": {"finetune.qwenft.io/component": "validate"},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "validate", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    }
    pod = parse_pod(body)
    assert pod.failure is None
    assert gpu_fit.reported_model_config(pod.report) == SEVEN_B
    failed = copy.deepcopy(body)
    failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 1
    assert parse_pod(failed).report == ""
