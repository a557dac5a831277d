"""The reconcile decision as a table: observed children -> actions and status.

Covers: each phase of the flow (Pending/MissingReference, Validating, Training with pods
pending and running, Merging, Deploying, Ready, Succeeded without inference) with the
children it creates; every failure reason (InvalidSpec, InvalidDataset with the
validator's message, MissingReference, TrainingFailed with the pod's exit code and
termination message, DeadlineExceeded, BackoffLimitExceeded, MergeFailed, DeployFailed)
with phase Failed and a Warning event; waiting briefly for a failed pod the watch has not
shown yet; suspend and resume (the Job is suspended/unsuspended, conditions and events);
Kueue-queued Jobs left for Kueue to admit; idempotence (children present -> nothing
created, the same state twice -> no status patch, no event); terminal phases stay put;
a training pod that stopped with a checkpoint (exit 75) shown in the Training condition and
never named as the failure;
the merge skipped for a full fine-tune; the smoke test of a Ready run with
evaluationPrompts (asked for once per generation while it runs, its outcome recorded in
status.smokeTest and SmokeTested True/False with SmokeTestFailed or EndpointUnreachable
and an event, the run staying Ready; not asked again until the generation changes; no
test without prompts); a changed spec.inference.checkpoint on a Ready run (the merge Job
of the old choice deleted, the new one created with the new --checkpoint once it is gone,
the server left alone until that merge succeeded, then its pod template replaced so the
Deployment rolls; removing the choice merges the final adapter; the builtin server without
a merge rolls at once; an unchanged choice does nothing; a Job or Deployment without the
annotation counts as final); any other change of the spec the server Deployment is built
from on a Ready run (new replicas, engine builtin -> vllm) replaces it once, with one
ServerUpdated Event, the run Deploying until every replica runs the new template; a new
generation that builds the same Deployment, or the watch showing the replaced one, asks for
nothing; a Deployment without the digest annotation is replaced once; a replace waits for
a missing reference; observe.py parsing of
Job, Pod and Deployment objects and of validator reports.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from qwenft_operator import conditions as cond
from qwenft_operator.actions import (
    CreateChild,
    Decision,
    DeleteChild,
    EmitEvent,
    PatchStatus,
    ReplaceChild,
    Requeue,
    RunSmokeTest,
    SetJobSuspended,
)
from qwenft_operator.builders import merge, training
from qwenft_operator.builders import serving as serving_builders
from qwenft_operator.observe import (
    DeploymentFacts,
    JobFacts,
    PodFacts,
    Termination,
    parse_deployment,
    parse_job,
    parse_pod,
    report_message,
)
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import TERMINAL_PHASES, Phase
from qwenft_operator.queueing import QueueWait
from qwenft_operator.reconcile import (
    QUEUE_RECHECK,
    Observed,
    decide,
    decide_invalid_spec,
    needs_queue_check,
)
from qwenft_operator.status import Progress, QwenFineTuneStatus, SmokeOutcome, SmokeTest
from qwenft_trainer.exit_codes import CHECKPOINT_NOT_FOUND

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_run(example: str = "lora-single-gpu", **spec: Any) -> Run:
    body = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"].update(copy.deepcopy(spec))
    return Run.from_body(body)


def summary(decision: Decision) -> list[str]:
    """Actions as short strings (status patches left out)."""
    out = []
    for action in decision.actions:
        match action:
            case CreateChild(kind=kind, name=name):
                out.append(f"create {kind} {name}")
            case ReplaceChild(kind=kind, name=name):
                out.append(f"replace {kind} {name}")
            case DeleteChild(kind=kind, name=name):
                out.append(f"delete {kind} {name}")
            case SetJobSuspended(name=name, suspend=suspend):
                out.append(f"{'suspend' if suspend else 'resume'} {name}")
            case EmitEvent(type=type_, reason=reason):
                out.append(f"event {type_} {reason}")
            case Requeue():
                out.append("requeue")
    return out


def job(name: str, state: str = "Active", **kw: Any) -> JobFacts:
    return JobFacts(name=name, state=state, **kw)  # type: ignore[arg-type]


def failed_pod(name: str, component: str, code: int, message: str) -> PodFacts:
    term = Termination("c", code, "Error", message, NOW - timedelta(seconds=30))
    return PodFacts(name=name, component=component, phase="Failed", failure=term)


def built_body(run: Run) -> dict[str, Any]:
    """The server Deployment the operator builds for ``run``."""
    return serving_builders.build_serve_deployment(run, serving_builders.build_serve_target(run))


def built_deployment(
    run: Run | None = None, *, ready: int = 1, available: bool = True, **facts: Any
) -> DeploymentFacts:
    """The server Deployment the operator builds for ``run`` (``make_run()`` by default) as
    the watch shows it, its digest current, with ``ready`` replicas ready."""
    return dataclasses.replace(
        parse_deployment(built_body(run or make_run())),
        ready_replicas=ready,
        available=available,
        **facts,
    )


def status_in(phase: Phase, *conds: tuple[str, str, str]) -> QwenFineTuneStatus:
    status = QwenFineTuneStatus(phase=phase)
    for type_, value, reason in conds:
        status.conditions = cond.set_condition(
            status.conditions,
            type=type_,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message="",
            generation=2,
            now=NOW,
        )
    return status


RUN = "support-lora"
TOKEN = ("secret", "hf-token")
DATASET = ("configmap", "support-chats")
OUTPUT = ("persistentvolumeclaim", "qwenft-runs")
VALIDATED = status_in(Phase.VALIDATING)
DONE_VALIDATE = job(f"{RUN}-validate", "Succeeded")
DONE_TRAIN = job(f"{RUN}-train", "Succeeded")
DONE_MERGE = job(f"{RUN}-merge", "Succeeded")
ENDED = NOW - timedelta(seconds=60)
# A single-node run's training step: no rendezvous Service.
STARTS_TRAINING = [
    f"create ConfigMap {RUN}-config",
    f"create Job {RUN}-train",
    "event Normal Training",
]

# id, observed, expected phase, expected actions (without status patches), failure reason
FLOW: list[tuple[str, Observed, Phase, list[str], str | None]] = [
    (
        "new-run-starts-validation",
        Observed(),
        Phase.VALIDATING,
        [f"create Job {RUN}-validate", "event Normal Validating"],
        None,
    ),
    (
        "missing-reference-waits",
        Observed(references={TOKEN: None, ("persistentvolumeclaim", "qwenft-runs"): None}),
        Phase.PENDING,
        ["requeue", "event Normal Pending", "event Warning MissingReference"],
        None,
    ),
    (
        "validation-running",
        Observed(validate_job=job(f"{RUN}-validate")),
        Phase.VALIDATING,
        ["event Normal Validating"],
        None,
    ),
    (
        "validated-creates-training",
        Observed(validate_job=DONE_VALIDATE),
        Phase.TRAINING,
        STARTS_TRAINING,
        None,
    ),
    (
        "validator-exited-zero-before-the-job-completed",
        Observed(
            validate_job=job(f"{RUN}-validate"),
            pods=(PodFacts(name="v-0", component="validate", phase="Succeeded"),),
        ),
        Phase.TRAINING,
        STARTS_TRAINING,
        None,
    ),
    (
        "validator-pod-running-job-active",
        Observed(
            validate_job=job(f"{RUN}-validate"),
            pods=(PodFacts(name="v-0", component="validate", phase="Running"),),
        ),
        Phase.VALIDATING,
        ["event Normal Validating"],
        None,
    ),
    (
        "training-pods-pending",
        Observed(validate_job=DONE_VALIDATE, train_job=job(f"{RUN}-train", ready=0)),
        Phase.TRAINING,
        ["event Normal Training"],
        None,
    ),
    (
        "trained-starts-merge",
        Observed(validate_job=DONE_VALIDATE, train_job=DONE_TRAIN),
        Phase.MERGING,
        [f"create Job {RUN}-merge", "event Normal Merging"],
        None,
    ),
    (
        "merged-deploys",
        Observed(train_job=DONE_TRAIN, merge_job=DONE_MERGE),
        Phase.DEPLOYING,
        [f"create Service {RUN}-serve", f"create Deployment {RUN}-serve", "event Normal Deploying"],
        None,
    ),
    (
        "deployment-available-ready",
        Observed(
            train_job=DONE_TRAIN,
            merge_job=DONE_MERGE,
            deployment=built_deployment(),
        ),
        Phase.READY,
        ["event Normal Ready"],
        None,
    ),
    (
        "invalid-dataset",
        Observed(
            validate_job=job(
                f"{RUN}-validate", "Failed", reason="PodFailurePolicy", finished_at=ENDED
            ),
            pods=(
                failed_pod(
                    "v-0",
                    "validate",
                    1,
                    '{"ok": false, "message": "2 bad record(s); first: line 3"}',
                ),
            ),
        ),
        Phase.FAILED,
        ["event Warning InvalidDataset"],
        cond.INVALID_DATASET,
    ),
    (
        "validator-cannot-load-tokenizer",
        Observed(
            validate_job=job(
                f"{RUN}-validate", "Failed", reason="BackoffLimitExceeded", finished_at=ENDED
            ),
            pods=(failed_pod("v-0", "validate", 2, "can't load the tokenizer"),),
        ),
        Phase.FAILED,
        ["event Warning InvalidSpec"],
        cond.INVALID_SPEC,
    ),
    (
        "training-failed-by-pod-failure-policy",
        Observed(
            validate_job=DONE_VALIDATE,
            train_job=job(f"{RUN}-train", "Failed", reason="PodFailurePolicy", finished_at=ENDED),
            pods=(failed_pod(f"{RUN}-train-0-x", "train", 3, "InvalidConfig: bad lr"),),
        ),
        Phase.FAILED,
        ["event Warning TrainingFailed"],
        cond.TRAINING_FAILED,
    ),
    (
        "training-deadline-exceeded",
        Observed(
            train_job=job(f"{RUN}-train", "Failed", reason="DeadlineExceeded", finished_at=NOW),
        ),
        Phase.FAILED,
        ["event Warning DeadlineExceeded"],
        cond.DEADLINE_EXCEEDED,
    ),
    (
        "training-backoff-limit-exceeded",
        Observed(
            train_job=job(
                f"{RUN}-train", "Failed", reason="BackoffLimitExceeded", failed=4, finished_at=ENDED
            ),
            pods=(failed_pod(f"{RUN}-train-0-y", "train", 137, "OOMKilled"),),
        ),
        Phase.FAILED,
        ["event Warning BackoffLimitExceeded"],
        cond.BACKOFF_LIMIT_EXCEEDED,
    ),
    (
        "merge-failed",
        Observed(
            train_job=DONE_TRAIN,
            merge_job=job(f"{RUN}-merge", "Failed", reason="PodFailurePolicy", finished_at=ENDED),
            pods=(failed_pod(f"{RUN}-merge-z", "merge", 1, "base model mismatch"),),
        ),
        Phase.FAILED,
        ["event Warning MergeFailed"],
        cond.MERGE_FAILED,
    ),
    (
        "deploy-failed",
        Observed(
            train_job=DONE_TRAIN,
            merge_job=DONE_MERGE,
            deployment=built_deployment(ready=0, available=False, failed=True, message="timed out"),
        ),
        Phase.FAILED,
        ["event Warning DeployFailed"],
        cond.DEPLOY_FAILED,
    ),
]


@pytest.mark.parametrize(("observed", "phase", "actions", "reason"), [c[1:] for c in FLOW],
                         ids=[c[0] for c in FLOW])  # fmt: skip
def test_flow_table(
    observed: Observed, phase: Phase, actions: list[str], reason: str | None
) -> None:
    decision = decide(make_run(), QwenFineTuneStatus(), observed, NOW)
    assert decision.status.phase == phase
    assert summary(decision) == actions
    assert decision.status.observed_generation == 2
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    if reason is None:
        assert failed is None
    else:
        assert failed is not None and failed.reason == reason and failed.status == "True"
        assert decision.status.completion_time == NOW


def failure_message(decision: Decision) -> str:
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    assert failed is not None
    return failed.message


def decide_case(case_id: str) -> Decision:
    observed = next(c[1] for c in FLOW if c[0] == case_id)
    return decide(make_run(), QwenFineTuneStatus(), observed, NOW)


def test_failure_messages_carry_what_the_user_needs() -> None:
    assert failure_message(decide_case("invalid-dataset")) == "2 bad record(s); first: line 3"
    training = failure_message(decide_case("training-failed-by-pod-failure-policy"))
    assert "exited with code 3" in training and "InvalidConfig: bad lr" in training
    assert f"{RUN}-train-0-x" in training
    backoff = failure_message(decide_case("training-backoff-limit-exceeded"))
    assert "4 pod failure(s)" in backoff and "code 137" in backoff and "backoffLimit 3" in backoff
    assert "activeDeadlineSeconds=86400" in failure_message(
        decide_case("training-deadline-exceeded")
    )
    assert "base model mismatch" in failure_message(decide_case("merge-failed"))
    assert failure_message(decide_case("deploy-failed")) == "timed out"
    pending = decide_case("missing-reference-waits")
    validated = cond.get_condition(pending.status.conditions, cond.VALIDATED)
    assert validated is not None and validated.reason == cond.MISSING_REFERENCE
    assert "secret hf-token" in validated.message and "team" in validated.message


MISSING_CHECKPOINT = (
    "error: checkpoint 500 doesn't exist in /output/support-lora; kept checkpoints: 800, "
    "900, 1000 (best by eval loss: 900)"
)


def test_a_merge_that_finds_no_chosen_checkpoint_fails_with_its_list() -> None:
    log_tail = f"[merge] loading\n{MISSING_CHECKPOINT}\n"
    observed = Observed(
        train_job=DONE_TRAIN,
        merge_job=job(
            f"{RUN}-merge", "Failed", reason="PodFailurePolicy", finished_at=ENDED, checkpoint="500"
        ),
        pods=(failed_pod(f"{RUN}-merge-z", "merge", CHECKPOINT_NOT_FOUND, log_tail),),
    )
    decision = decide(make_run(inference={"checkpoint": 500}), QwenFineTuneStatus(), observed, NOW)
    assert decision.status.phase == Phase.FAILED
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    merged = cond.get_condition(decision.status.conditions, cond.MERGED)
    assert failed is not None and failed.reason == cond.CHECKPOINT_NOT_FOUND
    assert merged is not None and merged.reason == cond.CHECKPOINT_NOT_FOUND
    assert failed.message == MISSING_CHECKPOINT
    assert summary(decision) == ["event Warning CheckpointNotFound"]


def test_a_server_that_finds_no_chosen_checkpoint_fails_and_is_removed() -> None:
    run = make_run(inference={"checkpoint": 500}, merge={"enabled": False})
    crashed = dataclasses.replace(
        failed_pod(f"{RUN}-serve-abc", "serve", CHECKPOINT_NOT_FOUND, MISSING_CHECKPOINT),
        phase="Running",  # restarting after the exit
    )
    deployment = built_deployment(run, ready=0, available=False)
    assert deployment.checkpoint == "500"
    observed = Observed(train_job=DONE_TRAIN, deployment=deployment, pods=(crashed,))
    decision = decide(run, QwenFineTuneStatus(), observed, NOW)
    assert decision.status.phase == Phase.FAILED
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    assert failed is not None and failed.reason == cond.CHECKPOINT_NOT_FOUND
    assert failed.message == MISSING_CHECKPOINT
    assert summary(decision) == [
        f"delete Deployment {RUN}-serve",
        f"delete Service {RUN}-serve",
        "event Warning CheckpointNotFound",
    ]
    assert decision.status.endpoint is None
    # another exit of the server is the Deployment's to report, as before
    other = dataclasses.replace(crashed, failure=dataclasses.replace(crashed.failure, exit_code=1))
    running = decide(run, QwenFineTuneStatus(), dataclasses.replace(observed, pods=(other,)), NOW)
    assert running.status.phase == Phase.DEPLOYING


def test_invalid_spec_in_a_cluster() -> None:
    run = make_run(output={"path": "/tmp/out"})
    decision = decide(run, QwenFineTuneStatus(), Observed(), NOW)
    assert decision.status.phase == Phase.FAILED
    assert "spec.output.pvc" in failure_message(decision)
    assert summary(decision) == ["event Warning InvalidSpec"]
    unreadable = decide_invalid_spec(3, QwenFineTuneStatus(), "spec.lora.r: too big", NOW)
    assert unreadable.status.phase == Phase.FAILED
    assert failure_message(unreadable) == "spec.lora.r: too big"


def test_failed_job_waits_for_its_pod_then_fails_anyway() -> None:
    fresh = job(
        f"{RUN}-train", "Failed", reason="PodFailurePolicy", message="exit 3", finished_at=NOW
    )
    waiting = decide(make_run(), VALIDATED, Observed(train_job=fresh), NOW)
    assert waiting.status.phase != Phase.FAILED and summary(waiting) == ["requeue"]
    assert waiting.requeue_after is not None
    later = decide(make_run(), VALIDATED, Observed(train_job=fresh), NOW + timedelta(seconds=11))
    assert later.status.phase == Phase.FAILED and failure_message(later) == "exit 3"


def test_new_training_job_then_its_first_event_patch_nothing_more() -> None:
    """The report written with the new Job is the one its first (no pod ready) event gives,
    so that event costs no status write."""
    run = make_run()
    created = decide(run, VALIDATED, Observed(validate_job=DONE_VALIDATE), NOW)
    first_event = decide(
        run,
        created.status,
        Observed(validate_job=DONE_VALIDATE, train_job=job(f"{RUN}-train", ready=0)),
        NOW + timedelta(seconds=1),
    )
    assert first_event.of_type(PatchStatus) == []


def test_running_pods_set_start_time_and_condition() -> None:
    running = job(f"{RUN}-train", ready=1, start_time=NOW - timedelta(seconds=5))
    decision = decide(make_run(), VALIDATED, Observed(train_job=running), NOW)
    training = cond.get_condition(decision.status.conditions, cond.TRAINING)
    assert training is not None and training.reason == cond.TRAINING_RUNNING
    assert decision.status.start_time == NOW - timedelta(seconds=5)


def test_multi_node_job_is_running_only_when_every_pod_is_ready() -> None:
    run = make_run("qlora-multinode-zero2")
    partial = job("qlora-72b-train", ready=1, completions=2)
    decision = decide(run, VALIDATED, Observed(train_job=partial), NOW)
    training = cond.get_condition(decision.status.conditions, cond.TRAINING)
    assert training is not None and training.reason == cond.PODS_PENDING
    assert "1/2" in training.message


STOPPED_REPORT = json.dumps(
    {
        "status": "stopped",
        "reason": "Stopped",
        "message": "stopped at step 8 (stop file); /output/support-lora/checkpoint-8 is "
        "complete and a restart resumes from it",
        "step": 8,
    }
)


def stopped_pod(name: str, seconds_ago: int) -> PodFacts:
    term = Termination(
        "trainer",
        training.STOPPED_EXIT_CODE,
        "Error",
        STOPPED_REPORT,
        NOW - timedelta(seconds=seconds_ago),
    )
    return PodFacts(name=name, component="train", phase="Failed", failure=term)


def test_a_stopped_training_pod_is_reported_and_not_a_failure() -> None:
    """A pod stopped with a checkpoint (deleted, preempted): the Job makes a new one."""
    pods = (stopped_pod(f"{RUN}-train-0-old", 300), stopped_pod(f"{RUN}-train-0-new", 20))
    observed = Observed(train_job=job(f"{RUN}-train", active=1, ready=0), pods=pods)
    decision = decide(make_run(), VALIDATED, observed, NOW)
    assert decision.status.phase == Phase.TRAINING
    assert cond.get_condition(decision.status.conditions, cond.FAILED) is None
    training_cond = cond.get_condition(decision.status.conditions, cond.TRAINING)
    assert training_cond is not None and training_cond.reason == cond.PODS_PENDING
    assert training_cond.message == (
        f"0/1 training pods ready; pod {RUN}-train-0-new stopped at step 8 (stop file); "
        "/output/support-lora/checkpoint-8 is complete and a restart resumes from it"
    )


def test_a_failed_job_names_a_real_failure_before_a_stopped_pod() -> None:
    pods = (
        failed_pod(f"{RUN}-train-0-oom", "train", 137, "OOMKilled"),
        stopped_pod(f"{RUN}-train-0-stopped", 60),  # finished earlier than the OOM pod
    )
    failed_job = job(
        f"{RUN}-train", "Failed", reason="BackoffLimitExceeded", failed=4, finished_at=ENDED
    )
    decision = decide(make_run(), VALIDATED, Observed(train_job=failed_job, pods=pods), NOW)
    message = failure_message(decision)
    assert f"{RUN}-train-0-oom" in message and "code 137" in message
    assert "stopped" not in message


def test_suspend_and_resume() -> None:
    run = make_run(suspend=True)
    active = job(f"{RUN}-train", ready=1)
    suspending = decide(run, VALIDATED, Observed(train_job=active), NOW)
    assert summary(suspending) == [f"suspend {RUN}-train", "event Normal Suspended"]
    assert suspending.status.phase == Phase.SUSPENDED
    assert cond.is_true(suspending.status.conditions, cond.SUSPENDED)
    # The Job is suspended now; the same state again asks for nothing.
    parked = decide(
        run, suspending.status, Observed(train_job=job(f"{RUN}-train", "Suspended")), NOW
    )
    assert parked.actions == ()
    resumed = decide(
        make_run(), parked.status, Observed(train_job=job(f"{RUN}-train", "Suspended")), NOW
    )
    assert summary(resumed) == [
        f"resume {RUN}-train",
        "event Normal Resumed",
        "event Normal Training",
    ]
    suspended = cond.get_condition(resumed.status.conditions, cond.SUSPENDED)
    assert suspended is not None and (suspended.status, suspended.reason) == ("False", "Resumed")


def test_suspended_before_training_creates_the_job_suspended() -> None:
    decision = decide(make_run(suspend=True), VALIDATED, Observed(validate_job=DONE_VALIDATE), NOW)
    assert decision.status.phase == Phase.SUSPENDED
    train = next(a for a in decision.actions if isinstance(a, CreateChild) and a.kind == "Job")
    assert train.body["spec"]["suspend"] is True


def test_kueue_queued_job_is_left_to_kueue() -> None:
    run = make_run("kueue-queued")
    created = decide(
        run, VALIDATED, Observed(validate_job=job("queued-lora-validate", "Succeeded")), NOW
    )
    train = next(a for a in created.actions if isinstance(a, CreateChild) and a.kind == "Job")
    assert train.body["spec"]["suspend"] is True
    assert train.body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    queued = decide(
        run, created.status, Observed(train_job=job("queued-lora-train", "Suspended")), NOW
    )
    assert not queued.of_type(SetJobSuspended)
    training = cond.get_condition(queued.status.conditions, cond.TRAINING)
    assert training is not None and training.reason == cond.QUEUED
    admitted = decide(
        run, queued.status, Observed(train_job=job("queued-lora-train", ready=1)), NOW
    )
    assert admitted.status.phase == Phase.TRAINING and not admitted.of_type(SetJobSuspended)


INSUFFICIENT = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
    "in flavor default-flavor, 4 more needed"
)


def test_queued_run_carries_kueues_reason_and_looks_again() -> None:
    run = make_run("kueue-queued")
    held = Observed(train_job=job("queued-lora-train", "Suspended"))
    assert needs_queue_check(run, held)
    plain = decide(run, VALIDATED, held, NOW)
    assert plain.requeue_after == QUEUE_RECHECK  # Kueue's verdict changes without the Job
    told = dataclasses.replace(
        held, queue_wait=QueueWait("job-queued-lora-train-1a2b3", "Pending", INSUFFICIENT)
    )
    decision = decide(run, plain.status, told, NOW)
    training = cond.get_condition(decision.status.conditions, cond.TRAINING)
    assert training is not None and (training.status, training.reason) == ("False", cond.QUEUED)
    assert training.message == (
        f"waiting for Kueue to admit it (queue team-a); Kueue: {INSUFFICIENT}"
    )
    assert decision.status.phase == Phase.TRAINING


def test_queue_check_only_for_a_held_queued_job() -> None:
    queued = make_run("kueue-queued")
    running = Observed(train_job=job("queued-lora-train", ready=1))
    held = Observed(train_job=job("queued-lora-train", "Suspended"))
    assert not needs_queue_check(queued, running)
    assert not needs_queue_check(queued, Observed())
    assert not needs_queue_check(make_run("kueue-queued", suspend=True), held)
    assert not needs_queue_check(make_run(), Observed(train_job=job(f"{RUN}-train", "Suspended")))


def test_idempotent_when_children_exist() -> None:
    """Feeding a decision's status back with its children present asks for nothing."""
    run = make_run()
    steady = [
        Observed(validate_job=job(f"{RUN}-validate")),
        Observed(validate_job=DONE_VALIDATE, train_job=job(f"{RUN}-train", ready=1)),
        Observed(train_job=DONE_TRAIN, merge_job=job(f"{RUN}-merge")),
        Observed(
            train_job=DONE_TRAIN,
            merge_job=DONE_MERGE,
            deployment=built_deployment(ready=0, available=False),
        ),
        Observed(
            train_job=DONE_TRAIN,
            merge_job=DONE_MERGE,
            deployment=built_deployment(),
            smoke=SmokeOutcome(2, SmokeTest(passed=True, total=1, time=NOW), reachable=True),
        ),
    ]
    status = QwenFineTuneStatus()
    for observed in steady:
        status = decide(run, status, observed, NOW).status
        assert not decide(run, status, observed, NOW).of_type(CreateChild), observed
        again = decide(run, status, observed, NOW + timedelta(minutes=1))
        assert again.actions == (), observed
    assert status.phase == Phase.READY
    assert status.endpoint is not None and status.endpoint.model_name == "support-assistant"
    assert status.endpoint.url == f"http://{RUN}-serve.team.svc:8000/v1"
    assert status.outputs is not None and status.outputs.merged == f"/output/{RUN}/merged"
    assert status.children is not None and status.children.train_job == f"{RUN}-train"


READY = Observed(train_job=DONE_TRAIN, merge_job=DONE_MERGE, deployment=built_deployment())


def smoke_condition(decision: Decision) -> tuple[str, str, str] | None:
    found = cond.get_condition(decision.status.conditions, cond.SMOKE_TESTED)
    return None if found is None else (found.status, found.reason, found.message)


def test_ready_run_sends_its_evaluation_prompts_once() -> None:
    run = make_run()
    first = decide(run, QwenFineTuneStatus(), READY, NOW)
    assert first.status.phase == Phase.READY
    (test,) = first.of_type(RunSmokeTest)
    assert test == RunSmokeTest(
        f"http://{RUN}-serve.team.svc:8000/v1",
        "support-assistant",
        tuple(run.spec.evaluation_prompts),
        2,
    )
    found = smoke_condition(first)
    assert found is not None and found[:2] == ("Unknown", cond.SMOKE_TEST_RUNNING)
    # Still running: asked again (the runner runs one at a time), nothing else changes.
    again = decide(run, first.status, READY, NOW + timedelta(seconds=5))
    assert [type(a) for a in again.actions] == [RunSmokeTest]
    # An outcome of an older generation does not count.
    stale = SmokeOutcome(1, SmokeTest(passed=True, total=1), reachable=True)
    assert decide(run, first.status, dataclasses.replace(READY, smoke=stale), NOW).of_type(
        RunSmokeTest
    )


@pytest.mark.parametrize(
    ("outcome", "condition", "event"),
    [
        (
            SmokeOutcome(2, SmokeTest(passed=True, total=1, time=NOW), reachable=True),
            ("True", cond.SMOKE_TEST_PASSED, "1 of 1 evaluation prompts passed"),
            "event Normal SmokeTestPassed",
        ),
        (
            SmokeOutcome(
                2,
                SmokeTest(passed=False, total=1, failed=1, message="prompt 0 'hi': no", time=NOW),
                reachable=True,
            ),
            (
                "False",
                cond.SMOKE_TEST_FAILED,
                "1 of 1 evaluation prompts failed: prompt 0 'hi': no",
            ),
            "event Warning SmokeTestFailed",
        ),
        (
            SmokeOutcome(
                2,
                SmokeTest(passed=False, total=1, failed=1, message="x did not answer", time=NOW),
                reachable=False,
            ),
            (
                "False",
                cond.ENDPOINT_UNREACHABLE,
                "1 of 1 evaluation prompts failed: x did not answer",
            ),
            "event Warning EndpointUnreachable",
        ),
    ],
    ids=["passed", "failed", "unreachable"],
)
def test_smoke_outcome_is_recorded_and_the_run_stays_ready(
    outcome: SmokeOutcome, condition: tuple[str, str, str], event: str
) -> None:
    run = make_run()
    running = decide(run, QwenFineTuneStatus(), READY, NOW).status
    observed = dataclasses.replace(READY, smoke=outcome)
    recorded = decide(run, running, observed, NOW)
    assert recorded.status.phase == Phase.READY
    ready = cond.get_condition(recorded.status.conditions, cond.READY)
    assert ready is not None and ready.status == "True"
    assert smoke_condition(recorded) == condition
    assert recorded.status.smoke_test == outcome.result
    assert summary(recorded) == [event]
    assert recorded.of_type(PatchStatus)
    # Done for this generation: nothing more, even without the outcome held (restart).
    assert decide(run, recorded.status, READY, NOW + timedelta(minutes=1)).actions == ()
    # A new generation tests again.
    edited = dataclasses.replace(run, generation=3)
    assert decide(edited, recorded.status, READY, NOW).of_type(RunSmokeTest)


def test_no_smoke_test_without_evaluation_prompts() -> None:
    decision = decide(make_run(evaluationPrompts=[]), QwenFineTuneStatus(), READY, NOW)
    assert decision.status.phase == Phase.READY
    assert not decision.of_type(RunSmokeTest) and smoke_condition(decision) is None


@pytest.mark.parametrize("phase", sorted(TERMINAL_PHASES))
def test_terminal_phases_stay(phase: Phase) -> None:
    """A finished run is left as it is, whatever its children do now."""
    finished = status_in(phase, (cond.FAILED, "True", cond.TRAINING_FAILED))
    observed = Observed(train_job=job(f"{RUN}-train", "Active"))
    decision = decide(make_run(), finished, observed, NOW)
    assert decision.actions == () and decision.status == finished


def test_a_phase_that_is_not_terminal_moves_on() -> None:
    training = status_in(Phase.TRAINING)
    observed = Observed(train_job=job(f"{RUN}-train", "Succeeded"))
    assert decide(make_run(), training, observed, NOW).status.phase != Phase.TRAINING


def test_full_fine_tune_skips_merge_and_inference_off_succeeds() -> None:
    run = make_run("full-finetune", inference={"enabled": False})
    decision = decide(run, VALIDATED, Observed(train_job=job("full-1p5b-train", "Succeeded")), NOW)
    assert decision.status.phase == Phase.SUCCEEDED
    merged = cond.get_condition(decision.status.conditions, cond.MERGED)
    assert merged is not None and merged.reason == cond.MERGE_SKIPPED
    assert not decision.of_type(CreateChild)


def test_run_attached_to_a_model_server_gets_no_deployment() -> None:
    # vLLM would merge this adapter for a Deployment of the run's own (modulesToSave); a
    # QwenModelServer judges it instead, so nothing is merged and nothing is deployed.
    run = make_run(
        merge={"enabled": False},
        lora={"r": 16, "modulesToSave": ["lm_head"]},
        inference={"engine": "vllm", "server": "shared", "servedModelName": "support"},
        evaluationPrompts=[],
    )
    observed = Observed(
        train_job=job(f"{RUN}-train", "Succeeded"),
        deployment=DeploymentFacts(name=f"{RUN}-serve", replicas=1),  # from before attaching
    )
    decision = decide(run, VALIDATED, observed, NOW)
    assert decision.status.phase == Phase.SUCCEEDED
    assert summary(decision)[:2] == [
        f"delete Deployment {RUN}-serve",
        f"delete Service {RUN}-serve",
    ]
    assert not decision.of_type(CreateChild)
    ready = cond.get_condition(decision.status.conditions, cond.READY)
    assert ready is not None and ready.reason == cond.SERVED_BY_MODEL_SERVER
    assert decision.status.endpoint is not None
    assert decision.status.endpoint.url == "http://shared-server.team.svc:8000/v1"
    assert decision.status.endpoint.model_name == "support"


def test_status_patch_holds_only_changed_keys() -> None:
    run = make_run()
    first = decide(run, QwenFineTuneStatus(), Observed(validate_job=job(f"{RUN}-validate")), NOW)
    patch = next(a for a in first.actions if isinstance(a, PatchStatus)).patch
    assert patch["phase"] == "Validating" and patch["observedGeneration"] == 2
    assert "progress" not in patch
    with_progress = first.status.model_copy(update={"progress": Progress(step=5)})
    second = decide(run, with_progress, Observed(validate_job=DONE_VALIDATE), NOW)
    patch2 = next(a for a in second.actions if isinstance(a, PatchStatus)).patch
    assert "progress" not in patch2 and patch2["phase"] == "Training"


# observe.py: parsing API objects into facts.


def test_parse_job_reasons() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "j"},
        "spec": {"completions": 2, "suspend": False},
        "status": {
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                 "message": "Container trainer ... exit code 3",
                 "lastTransitionTime": "2026-01-02T03:04:05Z"},
            ],
        },
    }  # fmt: skip
    facts = parse_job(body)
    assert (facts.state, facts.reason, facts.completions) == ("Failed", "PodFailurePolicy", 2)
    assert facts.finished_at == NOW
    body["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 2}
    assert parse_job(body).state == "Succeeded"
    body["status"] = {}
    body["spec"]["suspend"] = True
    assert parse_job(body).state == "Suspended"


def test_parse_pod_termination_from_state_and_last_state() -> None:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "labels": {"finetune.qwenft.io/component": "train"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "spec": {"nodeName": "gpu-node-1"},
        "status": {
            "phase": "Failed",
            "podIP": "10.0.0.5",
            "containerStatuses": [
                {"name": "trainer", "state": {"waiting": {}},
                 "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": "bad"}}},
            ],
        },
    }  # fmt: skip
    facts = parse_pod(pod)
    assert (facts.component, facts.completion_index, facts.node_name) == ("train", 1, "gpu-node-1")
    assert facts.failure == Termination("trainer", 3, "Error", "bad")


def test_parse_deployment() -> None:
    dep: dict[str, Any] = {
        "metadata": {"name": "d", "generation": 1},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 1,
            "updatedReplicas": 1,
            "availableReplicas": 2,
            "readyReplicas": 2,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }
    # one of the two available pods is of an older template: the rollout isn't done
    assert not parse_deployment(dep).available
    dep["status"]["updatedReplicas"] = 2
    assert parse_deployment(dep).available
    dep["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet has timed out progressing."},
    ]  # fmt: skip
    facts = parse_deployment(dep)
    assert facts.failed and not facts.available and "timed out" in facts.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"ok": false, "message": "no usable dialogue"}', "no usable dialogue"),
        ('  "problems": [],\n  "message": "1 bad record(s); first: line 2: \\"x\\""\n}',
         '1 bad record(s); first: line 2: "x"'),
        ("Traceback...\nValueError: boom\n", "ValueError: boom"),
        ("", ""),
    ],
    ids=["whole-json", "log-tail", "plain-text", "empty"],
)  # fmt: skip
def test_report_message(text: str, expected: str) -> None:
    assert report_message(text) == expected


def test_a_server_refusing_its_checkpoint_wakes_the_run() -> None:
    from qwenft_operator.handlers import _server_refused

    refused = failed_pod(f"{RUN}-serve-abc", "serve", CHECKPOINT_NOT_FOUND, MISSING_CHECKPOINT)
    assert _server_refused(refused)
    assert not _server_refused(failed_pod(f"{RUN}-serve-abc", "serve", 1, "crash"))
    assert not _server_refused(failed_pod(f"{RUN}-merge-x", "merge", CHECKPOINT_NOT_FOUND, ""))


# spec.inference.checkpoint changed on a run that merged or serves already.


def chosen_run(choice: int | str | None, generation: int = 3, **spec: Any) -> Run:
    """lora-single-gpu (merged, builtin server, no evaluation prompts) with ``choice`` as
    spec.inference.checkpoint (None: unset) and the other inference fields kept."""
    body = yaml.safe_load((EXAMPLES / "lora-single-gpu.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=generation)
    body["spec"]["evaluationPrompts"] = []
    inference = body["spec"]["inference"]
    if choice is not None:
        inference["checkpoint"] = choice
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key].update(value)
        else:
            body["spec"][key] = value
    return Run.from_body(body)


def merged_for(choice: str, **kw: Any) -> JobFacts:
    return job(f"{RUN}-merge", "Succeeded", checkpoint=choice, **kw)


def serving(run: Run, *, available: bool = True) -> DeploymentFacts:
    """The server Deployment built for ``run`` (its checkpoint choice and digest)."""
    return built_deployment(run, ready=1 if available else 0, available=available)


def condition_of(decision: Decision, type_: str) -> tuple[str, str]:
    found = cond.get_condition(decision.status.conditions, type_)
    assert found is not None, type_
    return found.status, found.reason


def replaced(decision: Decision) -> list[dict[str, Any]]:
    return [a.body for a in decision.actions if isinstance(a, ReplaceChild)]


def created(decision: Decision, kind: str) -> list[dict[str, Any]]:
    return [a.body for a in decision.actions if isinstance(a, CreateChild) and a.kind == kind]


def command_of(body: dict[str, Any]) -> list[str]:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return list(container.get("args") or container["command"])


def ready_status(run: Run, observed: Observed) -> QwenFineTuneStatus:
    """The status a run reaches with ``observed``: Ready."""
    status = decide(run, VALIDATED, observed, NOW).status
    assert status.phase == Phase.READY
    return status


def test_a_new_checkpoint_on_a_ready_run_redoes_the_merge_then_rolls_the_server() -> None:
    before = chosen_run(None, generation=2)
    status = ready_status(before, Observed(train_job=DONE_TRAIN, merge_job=merged_for("final"),
                                           deployment=serving(before)))  # fmt: skip
    run = chosen_run(200)
    later = NOW + timedelta(minutes=5)

    # 1. the old merge Job goes; the old merged model is still served
    old = Observed(train_job=DONE_TRAIN, merge_job=merged_for("final"), deployment=serving(before))
    first = decide(run, status, old, later)
    assert summary(first) == [
        f"delete Job {RUN}-merge",
        "event Normal CheckpointChanged",
        "event Normal Merging",
    ]
    assert first.status.phase == Phase.MERGING and first.status.observed_generation == 3
    assert condition_of(first, cond.MERGED) == ("Unknown", cond.CHECKPOINT_CHANGED)
    assert condition_of(first, cond.READY) == ("False", cond.CHECKPOINT_CHANGED)
    event = next(a for a in first.actions if isinstance(a, EmitEvent))
    assert event.message == "merge redone for checkpoint 200 (was final)"
    assert not replaced(first) and not created(first, "Deployment")
    # the same look again (the watch not showing the deletion yet): no second Event
    again = decide(run, first.status, old, later)
    assert summary(again) == [f"delete Job {RUN}-merge"]
    # the Job being deleted (its pods going first): waited for, not deleted again
    going = dataclasses.replace(old, merge_job=merged_for("final", deleting=True))
    assert summary(decide(run, first.status, going, later)) == []

    # 2. gone: the merge Job for checkpoint 200
    gone = dataclasses.replace(old, merge_job=None)
    second = decide(run, first.status, gone, later)
    assert summary(second) == [f"create Job {RUN}-merge"]
    (merge_job,) = created(second, "Job")
    args = command_of(merge_job)
    assert args[args.index("--checkpoint") + 1] == "200"
    assert merge_job["metadata"]["annotations"] == {"finetune.qwenft.io/checkpoint": "200"}
    assert parse_job(merge_job).checkpoint == "200"
    assert second.status.phase == Phase.MERGING
    assert condition_of(second, cond.MERGED) == ("Unknown", cond.MERGE_RUNNING)

    # 3. while it runs the server is left alone
    running = dataclasses.replace(old, merge_job=job(f"{RUN}-merge", checkpoint="200"))
    third = decide(run, second.status, running, later)
    assert third.status.phase == Phase.MERGING
    assert summary(third) == [] and not replaced(third)
    assert condition_of(third, cond.READY) == ("False", cond.CHECKPOINT_CHANGED)

    # 4. merged: the Deployment's pod template is replaced, so it rolls onto the new merge
    merged = dataclasses.replace(old, merge_job=merged_for("200"))
    fourth = decide(run, third.status, merged, later)
    assert summary(fourth) == [
        f"replace Deployment {RUN}-serve",
        "event Normal CheckpointChanged",
        "event Normal Deploying",
    ]
    (deployment,) = replaced(fourth)
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {"finetune.qwenft.io/checkpoint": "200"}
    assert parse_deployment(deployment).checkpoint == "200"
    # the merged model was merged at checkpoint 200; the server just loads it
    assert "--checkpoint" not in command_of(deployment)
    assert fourth.status.phase == Phase.DEPLOYING
    assert condition_of(fourth, cond.MERGED) == ("True", cond.MERGE_SUCCEEDED)
    assert condition_of(fourth, cond.READY) == ("False", cond.CHECKPOINT_CHANGED)

    # 5. the rollout: new pods not ready yet; then available on checkpoint 200
    rolling = dataclasses.replace(merged, deployment=serving(run, available=False))
    fifth = decide(run, fourth.status, rolling, later)
    assert summary(fifth) == [] and fifth.status.phase == Phase.DEPLOYING
    rolled = dataclasses.replace(merged, deployment=serving(run))
    sixth = decide(run, fifth.status, rolled, later)
    assert summary(sixth) == ["event Normal Ready"]
    assert condition_of(sixth, cond.READY) == ("True", cond.ENDPOINT_READY)
    ready = cond.get_condition(sixth.status.conditions, cond.READY)
    assert ready is not None and ready.observed_generation == 3


def test_removing_the_checkpoint_merges_the_final_adapter_again() -> None:
    before = chosen_run(200, generation=2)
    observed = Observed(
        train_job=DONE_TRAIN, merge_job=merged_for("200"), deployment=serving(before)
    )
    status = ready_status(before, observed)
    run = chosen_run(None)
    first = decide(run, status, observed, NOW)
    assert summary(first)[0] == f"delete Job {RUN}-merge"
    second = decide(run, first.status, dataclasses.replace(observed, merge_job=None), NOW)
    (merge_job,) = created(second, "Job")
    assert "--checkpoint" not in command_of(merge_job)
    assert merge_job["metadata"]["annotations"] == {"finetune.qwenft.io/checkpoint": "final"}
    third = decide(run, second.status, dataclasses.replace(observed, merge_job=merged_for("final")),
                   NOW)  # fmt: skip
    (deployment,) = replaced(third)
    assert parse_deployment(deployment).checkpoint == "final"


@pytest.mark.parametrize("choice", [None, 200, "best"])
def test_an_unchanged_checkpoint_does_nothing(choice: int | str | None) -> None:
    extra: dict[str, Any] = {}
    if choice == "best":
        extra = {"evaluation": {"fraction": 0.05, "steps": 100}, "checkpoint": {"saveSteps": 100}}
    run = chosen_run(choice, **extra)
    value = "final" if choice is None else str(choice)
    observed = Observed(train_job=DONE_TRAIN, merge_job=merged_for(value), deployment=serving(run))
    status = ready_status(run, observed)
    decision = decide(run, status, observed, NOW)
    assert decision.actions == ()
    assert decision.status.phase == Phase.READY


def test_objects_without_the_annotations_count_as_final_and_the_server_is_replaced_once() -> None:
    """Made by an operator that recorded neither the choice nor the digest: the final
    adapter, as then; the Deployment is replaced once, then left alone."""
    run = chosen_run(None)
    merge_job = merge.build_merge_job(run)
    del merge_job["metadata"]["annotations"]
    deployment = serving_builders.build_serve_deployment(
        run, serving_builders.build_serve_target(run)
    )
    del deployment["metadata"]["annotations"]
    del deployment["spec"]["template"]["metadata"]["annotations"]
    old_job = dataclasses.replace(parse_job(merge_job), state="Succeeded")
    old_deployment = dataclasses.replace(parse_deployment(deployment), available=True)
    assert (old_job.checkpoint, old_deployment.checkpoint, old_deployment.digest) == (
        "final",
        "final",
        "",
    )
    observed = Observed(train_job=DONE_TRAIN, merge_job=old_job, deployment=old_deployment)
    # without a choice: the merge stands; the Deployment is replaced with one that records both
    first = decide(run, VALIDATED, observed, NOW)
    assert summary(first) == [
        f"replace Deployment {RUN}-serve",
        "event Normal ServerUpdated",
        "event Normal Deploying",
    ]
    (body,) = replaced(first)
    assert parse_deployment(body).digest == serving(run).digest != ""
    assert parse_deployment(body).checkpoint == "final"
    # once the watch shows it: nothing more (no replace on every pass)
    updated = dataclasses.replace(observed, deployment=serving(run))
    second = decide(run, first.status, updated, NOW)
    assert replaced(second) == [] and second.status.phase == Phase.READY
    assert decide(run, second.status, updated, NOW).actions == ()
    # with a choice, the merge is redone first (the server waits for it)
    chosen = decide(chosen_run(200), second.status, observed, NOW)
    assert summary(chosen)[0] == f"delete Job {RUN}-merge" and not replaced(chosen)


def test_builtin_server_without_merge_rolls_onto_a_new_checkpoint_at_once() -> None:
    """No merge Job: the builtin server resolves the choice itself (--checkpoint)."""
    no_merge = {"merge": {"enabled": False}}
    before = chosen_run(None, generation=2, **no_merge)
    observed = Observed(train_job=DONE_TRAIN, deployment=serving(before))
    status = ready_status(before, observed)
    run = chosen_run(200, **no_merge)
    decision = decide(run, status, observed, NOW)
    assert summary(decision) == [
        f"replace Deployment {RUN}-serve",
        "event Normal CheckpointChanged",
        "event Normal Deploying",
    ]
    (deployment,) = replaced(decision)
    args = command_of(deployment)
    assert args[args.index("--checkpoint") + 1] == "200"
    assert parse_deployment(deployment).checkpoint == "200"
    assert condition_of(decision, cond.MERGED) == ("False", cond.MERGE_SKIPPED)
    # back to the final adapter: rolled again, without --checkpoint
    back = decide(before, decision.status, dataclasses.replace(observed,
                  deployment=serving(run)), NOW)  # fmt: skip
    (final,) = replaced(back)
    assert "--checkpoint" not in command_of(final)
    assert parse_deployment(final).checkpoint == "final"


@pytest.mark.parametrize(
    "change", [{"checkpoint": 200}, {"replicas": 2}], ids=["checkpoint", "replicas"]
)
def test_a_replace_waits_for_a_missing_reference(change: dict[str, Any]) -> None:
    """A Deployment replaced onto a missing Secret would stall: it waits, as creation does."""
    no_merge = {"merge": {"enabled": False}}
    choice = change.pop("checkpoint", None)
    run = chosen_run(choice, **no_merge, inference=change)
    old = serving(chosen_run(None, **no_merge))
    observed = Observed(train_job=DONE_TRAIN, deployment=old, references={TOKEN: None})
    decision = decide(run, status_in(Phase.READY), observed, NOW)
    assert not replaced(decision)
    ready = cond.get_condition(decision.status.conditions, cond.READY)
    assert ready is not None and ready.reason == cond.MISSING_REFERENCE
    assert decision.status.phase == Phase.DEPLOYING
    # the Secret made: replaced
    found = dataclasses.replace(observed, references={})
    assert summary(decide(run, decision.status, found, NOW))[0] == f"replace Deployment {RUN}-serve"


# Any other change of the spec the server Deployment is built from, on a run that serves.


def test_new_replicas_on_a_ready_run_replace_the_deployment_once() -> None:
    before = chosen_run(None, generation=2)
    observed = Observed(train_job=DONE_TRAIN, merge_job=merged_for("final"),
                        deployment=serving(before))  # fmt: skip
    status = ready_status(before, observed)
    run = chosen_run(None, inference={"replicas": 2})
    first = decide(run, status, observed, NOW)
    assert summary(first) == [
        f"replace Deployment {RUN}-serve",
        "event Normal ServerUpdated",
        "event Normal Deploying",
    ]
    (body,) = replaced(first)
    assert body["spec"]["replicas"] == 2
    assert body == built_body(run)
    assert first.status.phase == Phase.DEPLOYING and first.status.observed_generation == 3
    assert condition_of(first, cond.READY) == ("False", cond.SERVER_UPDATED)
    events = [a for a in first.actions if isinstance(a, EmitEvent)]
    assert events[0].message == "the server Deployment is updated to the spec of generation 3"
    # the watch not showing the new spec yet: replaced again (the same body), no second Event
    again = decide(run, first.status, observed, NOW)
    assert summary(again) == [f"replace Deployment {RUN}-serve"]
    # the new spec shown, one of two replicas ready: Deploying, nothing to do
    rolling = dataclasses.replace(
        observed, deployment=built_deployment(run, ready=1, available=False)
    )
    third = decide(run, again.status, rolling, NOW)
    assert summary(third) == [] and third.status.phase == Phase.DEPLOYING
    assert condition_of(third, cond.READY) == ("False", cond.DEPLOYING)
    # both ready: Ready on generation 3
    rolled = dataclasses.replace(observed, deployment=built_deployment(run, ready=2))
    fourth = decide(run, third.status, rolled, NOW)
    assert summary(fourth) == ["event Normal Ready"]
    ready = cond.get_condition(fourth.status.conditions, cond.READY)
    assert ready is not None and ready.observed_generation == 3
    assert decide(run, fourth.status, rolled, NOW).actions == ()


def test_a_new_generation_that_builds_the_same_server_replaces_nothing() -> None:
    run = chosen_run(None, generation=2)
    observed = Observed(train_job=DONE_TRAIN, merge_job=merged_for("final"),
                        deployment=serving(run))  # fmt: skip
    status = ready_status(run, observed)
    later = chosen_run(None, generation=5)
    decision = decide(later, status, observed, NOW)
    assert not replaced(decision) and decision.status.phase == Phase.READY


def test_engine_builtin_to_vllm_replaces_the_server_command() -> None:
    before = chosen_run(None, generation=2)
    observed = Observed(train_job=DONE_TRAIN, merge_job=merged_for("final"),
                        deployment=serving(before))  # fmt: skip
    status = ready_status(before, observed)
    assert command_of(built_body(before))[:2] == ["qwenft", "serve"]
    run = chosen_run(None, inference={"engine": "vllm"})
    decision = decide(run, status, observed, NOW)
    (body,) = replaced(decision)
    command = command_of(body)
    assert command[: len(serving_builders.VLLM_COMMAND)] == serving_builders.VLLM_COMMAND
    assert command[command.index("--model") + 1] == f"/output/{RUN}/merged"
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert decision.status.phase == Phase.DEPLOYING
    assert condition_of(decision, cond.READY) == ("False", cond.SERVER_UPDATED)
