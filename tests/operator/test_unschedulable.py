"""Runs whose pods no node fits: the scheduler's verdict on the run, and the timeout.

Covers: parsing a pod's PodScheduled=False/Unschedulable condition (message, the time it
was first set, creation time as fallback; scheduled or gated pods are not unschedulable);
the summary of one step's pods (a single pod, a partly scheduled gang named as such with
the lowest rank's message, finished pods ignored, the longest wait counted); the decision
for an unschedulable validation, training or merge pod (the step's condition carries the
scheduler's message with reason PodsUnschedulable, a Warning Event says the same once per
new message, a later look is requeued for the timeout); the same state again costs no
patch and no Event; a pod scheduled again goes back to PodsPending; the timeout firing
from the pods' own times (a decision that never saw them before fails at once: nothing
is counted in operator memory) with reason Unschedulable, Failed, one Warning Event and
the Job deleted; runPolicy.schedulingTimeoutSeconds and spec.validation bounds and
defaults; the validation Job's deadline reported as DeadlineExceeded.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from qwenft_operator import conditions as cond
from qwenft_operator.actions import Decision, DeleteChild, EmitEvent, PatchStatus, Requeue
from qwenft_operator.observe import JobFacts, PodFacts, Unschedulable, parse_pod
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.reconcile import Observed, decide
from qwenft_operator.scheduling import find_unschedulable
from qwenft_operator.status import QwenFineTuneStatus
from qwenft_operator.workloads import RunPolicySpec, ValidationSpec

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GPUS = (
    "0/5 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
    "4 Insufficient nvidia.com/gpu."
)
SELECTOR = "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."


def make_run(example: str = "lora-single-gpu", **spec: Any) -> Run:
    body = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"].update(copy.deepcopy(spec))
    return Run.from_body(body)


def pod(
    name: str,
    component: str,
    *,
    index: int | None = None,
    node: str | None = None,
    phase: str = "Pending",
    waiting: str | None = None,
    since: datetime | None = NOW - timedelta(seconds=60),
) -> PodFacts:
    verdict = Unschedulable(waiting, since) if waiting is not None else None
    return PodFacts(name, component, phase, node_name=node, completion_index=index,
                    unschedulable=verdict)  # fmt: skip


def job(name: str, state: str = "Active", **kw: Any) -> JobFacts:
    return JobFacts(name=name, state=state, **kw)  # type: ignore[arg-type]


def condition(decision: Decision, type_: str) -> tuple[str, str, str]:
    found = cond.get_condition(decision.status.conditions, type_)
    assert found is not None, type_
    return found.status, found.reason, found.message


def warnings(decision: Decision) -> list[tuple[str, str]]:
    return [
        (a.reason, a.message)
        for a in decision.actions
        if isinstance(a, EmitEvent) and a.type == "Warning"
    ]


def requeue(decision: Decision) -> float | None:
    return decision.requeue_after


# observe.parse_pod


def pod_body(scheduled: dict[str, Any] | None, node: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "r-train-0-abc",
            "labels": {"finetune.qwenft.io/component": "train"},
            "creationTimestamp": "2026-01-02T03:00:00Z",
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": "Pending", "conditions": [scheduled] if scheduled else []},
    }


def test_parse_pod_reads_the_schedulers_verdict_and_its_time() -> None:
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": GPUS + " ", "lastTransitionTime": "2026-01-02T03:01:00Z"}  # fmt: skip
    facts = parse_pod(pod_body(scheduled))
    assert facts.unschedulable == Unschedulable(GPUS, datetime(2026, 1, 2, 3, 1, tzinfo=UTC))
    del scheduled["lastTransitionTime"]  # then the pod's creation time
    assert parse_pod(pod_body(scheduled)).unschedulable == Unschedulable(
        GPUS, datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    )
    gated = {**scheduled, "reason": "SchedulingGated"}
    assert parse_pod(pod_body(gated)).unschedulable is None
    assert parse_pod(pod_body(scheduled, node="gpu-node-0")).unschedulable is None
    assert parse_pod(pod_body({**scheduled, "status": "True"})).unschedulable is None
    assert parse_pod(pod_body(None)).unschedulable is None


# scheduling.find_unschedulable


def test_single_pod_summary() -> None:
    found = find_unschedulable(
        [pod("v", "validate", waiting=SELECTOR)], wanted=1, noun="validation", now=NOW
    )
    assert found is not None
    assert found.message == f"validation pod unschedulable: {SELECTOR}"
    assert found.since == NOW - timedelta(seconds=60)
    assert found.deadline(600) == NOW + timedelta(seconds=540)


def test_partly_scheduled_gang_is_named_with_the_lowest_ranks_message() -> None:
    pods = [
        pod("t-2", "train", index=2, waiting="rank 2 says", since=NOW - timedelta(seconds=30)),
        pod("t-0", "train", index=0, node="gpu-node-0", phase="Running"),
        pod("t-1", "train", index=1, waiting=GPUS, since=NOW - timedelta(seconds=90)),
        pod("t-1-old", "train", index=1, phase="Failed", waiting="retried away"),
    ]
    found = find_unschedulable(pods, wanted=3, noun="training", now=NOW)
    assert found is not None
    assert found.message == f"1 of 3 training pods scheduled; 2 unschedulable: {GPUS}"
    assert found.since == NOW - timedelta(seconds=90)  # the longest wait counts
    scheduled = [pods[1], pod("t-1", "train", index=1, node="gpu-node-1")]
    assert find_unschedulable(scheduled, wanted=3, noun="training", now=NOW) is None


def test_a_pod_without_a_time_counts_from_now() -> None:
    found = find_unschedulable(
        [pod("m", "merge", waiting="", since=None)], wanted=1, noun="merge", now=NOW
    )
    assert found is not None and found.since == NOW
    assert found.message == "merge pod unschedulable: no node fits the pod"


# reconcile.decide

RUN = "support-lora"
TIMEOUT = RunPolicySpec().scheduling_timeout_seconds
# (id, example, status before, observed, condition type, condition status, step's Job)
STUCK: list[tuple[str, str, Phase, Observed, str, str, str]] = [
    (
        "validation-pod",
        "lora-single-gpu",
        Phase.VALIDATING,
        Observed(
            validate_job=job(f"{RUN}-validate"),
            pods=(pod("v", "validate", waiting=SELECTOR),),
        ),
        cond.VALIDATED,
        "Unknown",
        f"{RUN}-validate",
    ),
    (
        "training-pod",
        "lora-single-gpu",
        Phase.TRAINING,
        Observed(
            validate_job=job(f"{RUN}-validate", "Succeeded"),
            train_job=job(f"{RUN}-train", completions=1),
            pods=(pod("t-0", "train", index=0, waiting=GPUS),),
        ),
        cond.TRAINING,
        "True",
        f"{RUN}-train",
    ),
    (
        "merge-pod",
        "lora-single-gpu",
        Phase.MERGING,
        Observed(
            train_job=job(f"{RUN}-train", "Succeeded"),
            merge_job=job(f"{RUN}-merge"),
            pods=(pod("m", "merge", waiting=SELECTOR),),
        ),
        cond.MERGED,
        "Unknown",
        f"{RUN}-merge",
    ),
]


@pytest.mark.parametrize(("example", "phase", "observed", "type_", "status", "job_name"),
                         [c[1:] for c in STUCK], ids=[c[0] for c in STUCK])  # fmt: skip
def test_unschedulable_step_reports_the_scheduler_then_fails_at_the_timeout(
    example: str, phase: Phase, observed: Observed, type_: str, status: str, job_name: str
) -> None:
    run = make_run(example)
    before = QwenFineTuneStatus(phase=phase)
    stuck = decide(run, before, observed, NOW)
    assert stuck.status.phase == phase
    state, reason, message = condition(stuck, type_)
    assert (state, reason) == (status, cond.PODS_UNSCHEDULABLE)
    verdict = observed.pods[0].unschedulable
    assert verdict is not None and verdict.message in message
    assert "runPolicy.schedulingTimeoutSeconds" in message
    deadline = NOW - timedelta(seconds=60) + timedelta(seconds=TIMEOUT)
    assert deadline.strftime("%Y-%m-%dT%H:%M:%SZ") in message
    assert warnings(stuck) == [(cond.PODS_UNSCHEDULABLE, message)]
    assert requeue(stuck) == TIMEOUT - 60
    assert cond.get_condition(stuck.status.conditions, cond.FAILED) is None
    assert not stuck.of_type(DeleteChild)

    # The same state a little later: no status write, no second Event; still requeued.
    later = NOW + timedelta(seconds=10)
    again = decide(run, stuck.status, observed, later)
    assert again.actions == (Requeue(TIMEOUT - 70),)

    # One second before the deadline nothing fails; at it the run does.
    almost = decide(run, stuck.status, observed, deadline - timedelta(seconds=1))
    assert almost.status.phase == phase and requeue(almost) == 1
    failed = decide(run, stuck.status, observed, deadline)
    assert failed.status.phase == Phase.FAILED
    assert condition(failed, cond.FAILED)[:2] == ("True", cond.UNSCHEDULABLE)
    assert condition(failed, type_)[:2] == ("False", cond.UNSCHEDULABLE)
    failure = condition(failed, cond.FAILED)[2]
    assert verdict.message in failure and f"for {TIMEOUT}s" in failure
    assert warnings(failed) == [(cond.UNSCHEDULABLE, failure)]
    assert failed.of_type(DeleteChild) == [DeleteChild("Job", job_name)]
    assert failed.status.completion_time == deadline
    assert requeue(failed) is None


def test_timeout_counts_from_the_pods_not_from_operator_memory() -> None:
    """A restarted operator (no earlier condition in hand) fails a run whose pod has been
    unschedulable longer than the timeout at once."""
    long_ago = NOW - timedelta(seconds=TIMEOUT + 5)
    observed = Observed(
        validate_job=job(f"{RUN}-validate", "Succeeded"),
        train_job=job(f"{RUN}-train", completions=1),
        pods=(pod("t-0", "train", index=0, waiting=GPUS, since=long_ago),),
    )
    decision = decide(make_run(), QwenFineTuneStatus(phase=Phase.TRAINING), observed, NOW)
    assert decision.status.phase == Phase.FAILED
    assert condition(decision, cond.FAILED)[1] == cond.UNSCHEDULABLE
    assert decision.of_type(DeleteChild) == [DeleteChild("Job", f"{RUN}-train")]


def test_partial_gang_is_named_and_a_new_verdict_is_a_new_warning() -> None:
    run = make_run("qlora-multinode-zero2", resources={"nodes": 3, "gpusPerNode": 8},
                   runPolicy={"schedulingTimeoutSeconds": 120})  # fmt: skip
    name = "qlora-72b"
    two_waiting = Observed(
        validate_job=job(f"{name}-validate", "Succeeded"),
        train_job=job(f"{name}-train", completions=3, ready=1),
        pods=(
            pod("t-0", "train", index=0, node="gpu-node-0", phase="Running"),
            pod("t-1", "train", index=1, waiting=GPUS),
            pod("t-2", "train", index=2, waiting=GPUS),
        ),
    )
    first = decide(run, QwenFineTuneStatus(phase=Phase.TRAINING), two_waiting, NOW)
    message = condition(first, cond.TRAINING)[2]
    assert message.startswith(f"1 of 3 training pods scheduled; 2 unschedulable: {GPUS}")
    assert requeue(first) == 60
    one_waiting = Observed(
        validate_job=two_waiting.validate_job,
        train_job=job(f"{name}-train", completions=3, ready=1),
        pods=(
            *two_waiting.pods[:1],
            pod("t-1", "train", index=1, node="gpu-node-1"),
            two_waiting.pods[2],
        ),
    )
    second = decide(run, first.status, one_waiting, NOW + timedelta(seconds=5))
    message2 = condition(second, cond.TRAINING)[2]
    assert message2.startswith("2 of 3 training pods scheduled; 1 unschedulable:")
    assert warnings(second) == [(cond.PODS_UNSCHEDULABLE, message2)]
    failed = decide(run, second.status, one_waiting, NOW + timedelta(seconds=60))
    assert condition(failed, cond.FAILED)[1] == cond.UNSCHEDULABLE
    assert "2 of 3 training pods scheduled" in condition(failed, cond.FAILED)[2]
    assert failed.of_type(DeleteChild) == [DeleteChild("Job", f"{name}-train")]


def test_scheduled_again_goes_back_to_pods_pending() -> None:
    stuck_pods = (pod("t-0", "train", index=0, waiting=GPUS),)
    observed = Observed(
        validate_job=job(f"{RUN}-validate", "Succeeded"),
        train_job=job(f"{RUN}-train", completions=1),
        pods=stuck_pods,
    )
    run = make_run()
    stuck = decide(run, QwenFineTuneStatus(phase=Phase.TRAINING), observed, NOW)
    placed = Observed(
        validate_job=observed.validate_job,
        train_job=observed.train_job,
        pods=(pod("t-0", "train", index=0, node="gpu-node-0"),),
    )
    pending = decide(run, stuck.status, placed, NOW + timedelta(seconds=3))
    assert condition(pending, cond.TRAINING) == (
        "True",
        cond.PODS_PENDING,
        "0/1 training pods ready",
    )
    assert warnings(pending) == [] and requeue(pending) is None
    assert pending.of_type(PatchStatus)


def test_validation_deadline_is_reported_as_deadline_exceeded() -> None:
    run = make_run(validation={"activeDeadlineSeconds": 900})
    ended = job(f"{RUN}-validate", "Failed", reason="DeadlineExceeded", finished_at=NOW)
    decision = decide(run, QwenFineTuneStatus(phase=Phase.VALIDATING),
                      Observed(validate_job=ended), NOW)  # fmt: skip
    assert condition(decision, cond.FAILED) == (
        "True",
        cond.DEADLINE_EXCEEDED,
        "dataset validation ran longer than validation.activeDeadlineSeconds=900",
    )


def test_spec_defaults_and_bounds() -> None:
    assert RunPolicySpec().scheduling_timeout_seconds == 600
    assert ValidationSpec().active_deadline_seconds == 3600
    with pytest.raises(ValidationError, match="schedulingTimeoutSeconds"):
        RunPolicySpec.model_validate({"schedulingTimeoutSeconds": 5})
    with pytest.raises(ValidationError, match="activeDeadlineSeconds"):
        ValidationSpec.model_validate({"activeDeadlineSeconds": 10})
