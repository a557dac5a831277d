"""Gang restarts of multi-node training, as the pure decision takes them step by step.

Covers (qwenft_operator.gang through reconcile.decide, two-node example): a rank that failed
(the Job failed, BackoffLimitExceeded) -> status.restarts 1, lastRestart with the rank, pod,
exit code and the replaced Job's UID, Training reason Restarting naming the cause, one
Warning Event, no Failed condition; the next decisions delete that Job once (foreground),
wait while it and its pods go (no new Job while a pod is listed, no second count or Event),
create the new Job, and keep Restarting until every new rank runs; a disrupted pod
(DisruptionTarget) or a rank stopped with a checkpoint (exit 75) while the Job runs -> a
restart counted in disruptionRestarts, not against backoffLimit; a failed Job with a
disrupted pod (the other rank lost its peer after) counts as a disruption, and a pod still
terminating with DisruptionTarget restarts the gang at once; a failed Job's cause is the
rank that failed on its own, not one whose trainer said PeerLost (ranks that only lost their
peer are a counted failure); a rank failing for real while the Job still runs is left to the
Job controller; the failure after runPolicy.backoffLimit real failures (disruptions not
counted) fails the run with BackoffLimitExceeded; exit code 3 and deadlines still fail at
once; pods of an older Job are ignored; a failed Job whose pod the watch hasn't shown is
waited for briefly; single-node runs keep the Job's own retries (its backoffLimit), a multi-
node Job gets backoffLimit 0; parsing of the facts this needs (Job UID and deletion, a pod's
DisruptionTarget, owning Job and failure reason).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from qwenft_operator import conditions as cond
from qwenft_operator.actions import CreateChild, Decision, DeleteChild, EmitEvent, Requeue
from qwenft_operator.builders import training
from qwenft_operator.metrics import OperatorMetrics
from qwenft_operator.observe import JobFacts, PodFacts, Termination, parse_job, parse_pod
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.reconcile import Observed, decide
from qwenft_operator.status import QwenFineTuneStatus, Restart

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN = "qlora-72b"
JOB = f"{RUN}-train"
UID = "job-uid-1"
LIMIT = 2


def make_run(example: str = "qlora-multinode-zero2", backoff_limit: int = LIMIT) -> Run:
    body = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"]["runPolicy"]["backoffLimit"] = backoff_limit
    return Run.from_body(body)


def training_status(**fields: Any) -> QwenFineTuneStatus:
    status = QwenFineTuneStatus(phase=Phase.TRAINING, **fields)
    for type_, value, reason in (
        (cond.VALIDATED, "True", cond.SPEC_VALID),
        (cond.TRAINING, "True", cond.TRAINING_RUNNING),
    ):
        status.conditions = cond.set_condition(
            status.conditions,
            type=type_,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message="",
            generation=2,
            now=NOW - timedelta(minutes=5),
        )
    return status


def train_job(state: str = "Active", uid: str = UID, **kw: Any) -> JobFacts:
    return JobFacts(name=JOB, state=state, uid=uid, completions=2, **kw)  # type: ignore[arg-type]


def failed_job(uid: str = UID) -> JobFacts:
    return train_job(
        "Failed",
        uid=uid,
        failed=1,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
        finished_at=NOW - timedelta(seconds=30),
    )


def rank(index: int, *, code: int | None = None, seconds_ago: int = 40, uid: str = UID,
         disruption: str | None = None, message: str = "") -> PodFacts:  # fmt: skip
    """Rank ``index``'s pod: running, or ended with ``code`` / a disruption."""
    name = f"{JOB}-{index}-abcde"
    if code is None and disruption is None:
        return PodFacts(name, "train", "Running", completion_index=index, ready=True, job_uid=uid)
    failure = None
    if code is not None:
        at = NOW - timedelta(seconds=seconds_ago)
        failure = Termination("trainer", code, "Error", message, at)
    return PodFacts(
        name, "train", "Failed", completion_index=index, failure=failure,
        disruption=disruption, job_uid=uid,
    )  # fmt: skip


VALIDATE = JobFacts(name=f"{RUN}-validate", state="Succeeded")


def seen(train_job: JobFacts | None = None, pods: tuple[PodFacts, ...] = ()) -> Observed:
    """What the watches show of a run in training: its finished validation Job too."""
    return Observed(validate_job=VALIDATE, train_job=train_job, pods=pods)


def training_condition(decision: Decision) -> cond.Condition:
    found = cond.get_condition(decision.status.conditions, cond.TRAINING)
    assert found is not None
    return found


def warnings(decision: Decision) -> list[EmitEvent]:
    return [a for a in decision.of_type(EmitEvent) if isinstance(a, EmitEvent)]


def deletes(decision: Decision) -> list[DeleteChild]:
    return [a for a in decision.of_type(DeleteChild) if isinstance(a, DeleteChild)]


def creates(decision: Decision) -> list[str]:
    return [
        f"{a.kind} {a.name}" for a in decision.of_type(CreateChild) if isinstance(a, CreateChild)
    ]


def test_a_failed_rank_restarts_the_whole_gang_step_by_step() -> None:
    run = make_run()
    pods = (rank(0), rank(1, code=1, message="RuntimeError: CUDA error: an illegal memory access"))
    first = decide(run, training_status(), seen(train_job=failed_job(), pods=pods), NOW)
    status = first.status
    assert status.phase == Phase.TRAINING
    assert cond.get_condition(status.conditions, cond.FAILED) is None
    assert (status.restarts, status.disruption_restarts) == (1, None)
    assert status.last_restart == Restart(
        time=NOW,
        cause="Failure",
        rank=1,
        pod=f"{JOB}-1-abcde",
        message="container trainer exited with code 1 (Error): RuntimeError: CUDA error: "
        "an illegal memory access",
        job_uid=UID,
    )
    training_cond = training_condition(first)
    assert training_cond.reason == cond.RESTARTING
    assert training_cond.message.startswith(
        f"restart 1 (failure 1 of backoffLimit {LIMIT}): rank 1 (pod {JOB}-1-abcde) container "
        "trainer exited with code 1"
    )
    assert [(e.type, e.reason) for e in warnings(first)] == [("Warning", cond.RESTARTING)]
    assert warnings(first)[0].message == training_cond.message
    assert deletes(first) == [] and creates(first) == []
    assert first.requeue_after is not None

    # the restart is recorded: now the Job goes (once), and nothing is counted again
    second = decide(run, status, seen(train_job=failed_job(), pods=pods), NOW)
    assert deletes(second) == [DeleteChild("Job", JOB)]
    assert second.status.restarts == 1 and warnings(second) == []
    assert training_condition(second).reason == cond.RESTARTING

    deleting = failed_job()
    deleting = JobFacts(**{**deleting.__dict__, "deleting": True})
    third = decide(run, second.status, seen(train_job=deleting, pods=pods), NOW)
    assert deletes(third) == [] and warnings(third) == [] and creates(third) == []
    assert training_condition(third).message.endswith(
        f"waiting for Job {JOB} and its pods to be gone ({JOB}-0-abcde, {JOB}-1-abcde)"
    )

    # the Job is gone but a pod is still listed: no new Job yet
    fourth = decide(run, third.status, seen(pods=(rank(0),)), NOW)
    assert creates(fourth) == [] and fourth.requeue_after is not None
    assert training_condition(fourth).reason == cond.RESTARTING

    fifth = decide(run, fourth.status, seen(), NOW)
    assert creates(fifth) == [f"ConfigMap {RUN}-config", f"Service {JOB}", f"Job {JOB}"]
    assert fifth.status.restarts == 1 and warnings(fifth) == []
    assert training_condition(fifth).reason == cond.RESTARTING
    assert "rank 1" in training_condition(fifth).message

    new_uid = "job-uid-2"
    starting = train_job(uid=new_uid, ready=1)
    sixth = decide(run, fifth.status, seen(train_job=starting), NOW)
    assert training_condition(sixth).reason == cond.RESTARTING
    assert "1/2 training pods ready" in training_condition(sixth).message
    running = train_job(uid=new_uid, ready=2)
    both = (rank(0, uid=new_uid), rank(1, uid=new_uid))
    seventh = decide(run, sixth.status, seen(train_job=running, pods=both), NOW)
    assert training_condition(seventh).reason == cond.TRAINING_RUNNING
    assert seventh.status.restarts == 1 and deletes(seventh) == []


def test_a_queued_runs_new_job_waits_for_admission_as_queued() -> None:
    body = yaml.safe_load((EXAMPLES / "qlora-multinode-zero2.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"]["scheduling"]["queueName"] = "team-a"
    run = Run.from_body(body)
    record = Restart(time=NOW, cause="Disruption", rank=1, message="disrupted", job_uid=UID)
    status = training_status(restarts=1, disruption_restarts=1, last_restart=record)
    status.conditions = cond.set_condition(
        status.conditions, type=cond.TRAINING, status="True", reason=cond.RESTARTING,
        message="restart 1", generation=2, now=NOW,
    )  # fmt: skip
    decision = decide(run, status, seen(), NOW)
    assert creates(decision) == [f"ConfigMap {RUN}-config", f"Service {JOB}", f"Job {JOB}"]
    assert training_condition(decision).reason == cond.QUEUED
    assert decision.status.phase == Phase.TRAINING


def test_a_disrupted_rank_restarts_the_gang_without_counting() -> None:
    run = make_run()
    evicted = rank(1, disruption="EvictionByEvictionAPI: Eviction API: evicting")
    decision = decide(
        run, training_status(), seen(train_job=train_job(), pods=(rank(0), evicted)), NOW
    )
    status = decision.status
    assert (status.restarts, status.disruption_restarts) == (1, 1)
    assert status.last_restart is not None and status.last_restart.cause == "Disruption"
    message = training_condition(decision).message
    assert training_condition(decision).reason == cond.RESTARTING
    assert "a disruption, not counted against backoffLimit" in message
    assert "rank 1" in message and "EvictionByEvictionAPI" in message
    assert len(warnings(decision)) == 1


def test_a_rank_stopped_with_a_checkpoint_is_a_disruption() -> None:
    stopped = rank(1, code=training.STOPPED_EXIT_CODE, message="stopped at step 40")
    decision = decide(
        make_run(), training_status(), seen(train_job=train_job(), pods=(rank(0), stopped)), NOW
    )
    assert decision.status.last_restart is not None
    assert decision.status.last_restart.cause == "Disruption"
    assert "stopped with a checkpoint (exit code 75)" in training_condition(decision).message


def test_a_lost_node_then_its_peer_failing_counts_as_a_disruption() -> None:
    """Node loss: rank 1's pod is marked disrupted first; rank 0 then fails (peer lost)."""
    lost = rank(1, code=137, seconds_ago=50, disruption="DeletionByPodGC: node gone")
    peer = rank(0, code=1, seconds_ago=45, message="lost contact with another rank")
    decision = decide(
        make_run(), training_status(), seen(train_job=failed_job(), pods=(peer, lost)), NOW
    )
    assert decision.status.last_restart is not None
    assert decision.status.last_restart.cause == "Disruption"
    assert decision.status.last_restart.rank == 1
    assert decision.status.disruption_restarts == 1


PEER_LOST = json.dumps({"status": "failed", "reason": "PeerLost", "message": "rank 0 lost"})


def test_the_cause_is_the_rank_that_failed_on_its_own_not_one_that_lost_its_peer() -> None:
    peer = rank(0, code=1, seconds_ago=50, message=PEER_LOST)  # reported first, a consequence
    crashed = rank(1, code=139, seconds_ago=45, message="Segmentation fault")
    decision = decide(make_run(), training_status(), seen(failed_job(), (peer, crashed)), NOW)
    record = decision.status.last_restart
    assert record is not None and (record.cause, record.rank) == ("Failure", 1)
    assert "code 139" in record.message
    # only ranks that lost their peer (a rank hung, or a node lost without notice): a
    # counted failure, so a run that keeps hanging ends at backoffLimit
    alone = decide(make_run(), training_status(), seen(failed_job(), (peer,)), NOW)
    record = alone.status.last_restart
    assert record is not None and (record.cause, record.rank) == ("Failure", 0)
    assert alone.status.disruption_restarts is None


def test_a_rank_being_disrupted_restarts_the_gang_before_its_pod_ends() -> None:
    """Preemption in progress: DisruptionTarget on a pod still terminating."""
    preempted = PodFacts(
        f"{JOB}-1-abcde", "train", "Running", completion_index=1, job_uid=UID,
        disruption="PreemptionByScheduler: preempted by team/urgent",
    )  # fmt: skip
    decision = decide(make_run(), training_status(), seen(train_job(), (rank(0), preempted)), NOW)
    assert decision.status.disruption_restarts == 1
    assert "PreemptionByScheduler" in training_condition(decision).message


def test_a_real_failure_while_the_job_runs_is_left_to_the_job_controller() -> None:
    crashed = rank(1, code=1, message="segfault")
    decision = decide(
        make_run(),
        training_status(),
        seen(train_job=train_job(ready=1), pods=(rank(0), crashed)),
        NOW,
    )
    assert decision.status.restarts is None and warnings(decision) == []
    assert deletes(decision) == []


def test_more_real_failures_than_backoff_limit_fail_the_run() -> None:
    run = make_run(backoff_limit=LIMIT)
    # two real failures and three disruptions so far: the third real failure is one too many
    before = training_status(restarts=LIMIT + 3, disruption_restarts=3)
    pods = (rank(0), rank(1, code=1, message="Traceback: ValueError"))
    decision = decide(run, before, seen(train_job=failed_job(), pods=pods), NOW)
    assert decision.status.phase == Phase.FAILED
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    assert failed is not None and failed.reason == cond.BACKOFF_LIMIT_EXCEEDED
    assert failed.message.startswith(
        f"{LIMIT + 1} rank failure(s), backoffLimit {LIMIT}; last rank 1"
    )
    assert decision.status.restarts == LIMIT + 3
    assert [(e.type, e.reason) for e in warnings(decision)] == [
        ("Warning", cond.BACKOFF_LIMIT_EXCEEDED)
    ]
    # one failure fewer (a disruption more instead): restarted
    fewer = training_status(restarts=LIMIT + 3, disruption_restarts=4)
    restarted = decide(run, fewer, seen(train_job=failed_job(), pods=pods), NOW)
    assert restarted.status.phase == Phase.TRAINING and restarted.status.restarts == LIMIT + 4


def test_backoff_limit_zero_fails_at_the_first_real_failure_but_not_a_disruption() -> None:
    run = make_run(backoff_limit=0)
    crashed = (rank(0), rank(1, code=1))
    failed = decide(run, training_status(), seen(train_job=failed_job(), pods=crashed), NOW)
    assert failed.status.phase == Phase.FAILED
    disrupted = (rank(0), rank(1, disruption="PreemptionByScheduler"))
    kept = decide(run, training_status(), seen(train_job=train_job(), pods=disrupted), NOW)
    assert kept.status.phase == Phase.TRAINING and kept.status.disruption_restarts == 1


def test_invalid_input_and_deadlines_still_fail_at_once() -> None:
    bad = rank(1, code=training.INVALID_INPUT_EXIT_CODE, message="bad dataset")
    policy = train_job("Failed", reason="PodFailurePolicy", message="exit 3", finished_at=NOW)
    decision = decide(make_run(), training_status(), seen(train_job=policy, pods=(bad,)), NOW)
    failed = cond.get_condition(decision.status.conditions, cond.FAILED)
    assert failed is not None and failed.reason == cond.TRAINING_FAILED
    assert decision.status.restarts is None
    deadline = train_job("Failed", reason="DeadlineExceeded", finished_at=NOW)
    late = decide(make_run(), training_status(), seen(train_job=deadline), NOW)
    failed = cond.get_condition(late.status.conditions, cond.FAILED)
    assert failed is not None and failed.reason == cond.DEADLINE_EXCEEDED


def test_pods_of_an_older_job_are_not_a_cause() -> None:
    old = rank(1, disruption="PreemptionByScheduler", uid="job-uid-0")
    decision = decide(
        make_run(), training_status(), seen(train_job=train_job(ready=1), pods=(rank(0), old)), NOW
    )
    assert decision.status.restarts is None and warnings(decision) == []


def test_a_failed_job_waits_briefly_for_its_pod_then_restarts_anyway() -> None:
    just = train_job("Failed", reason="BackoffLimitExceeded", message="limit", finished_at=NOW)
    waiting = decide(make_run(), training_status(), seen(train_job=just), NOW)
    assert waiting.status.restarts is None and waiting.of_type(Requeue)
    assert waiting.status.phase == Phase.TRAINING
    later = NOW + timedelta(seconds=30)
    decision = decide(make_run(), training_status(), seen(train_job=just), later)
    assert decision.status.restarts == 1
    assert decision.status.last_restart is not None
    assert decision.status.last_restart.message == "limit"


def test_single_node_runs_keep_the_jobs_own_retries() -> None:
    single = make_run("lora-single-gpu")
    multi = make_run()
    assert training.build_train_job(single)["spec"]["backoffLimit"] == LIMIT
    assert training.build_train_job(multi)["spec"]["backoffLimit"] == 0
    rules = training.build_train_job(multi)["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["Ignore", "Ignore", "FailJob"]
    failed = JobFacts(
        name="support-lora-train", state="Failed", uid=UID, reason="BackoffLimitExceeded",
        failed=LIMIT + 1, finished_at=NOW - timedelta(seconds=30),
    )  # fmt: skip
    pod = PodFacts(
        "support-lora-train-0-x", "train", "Failed",
        failure=Termination("trainer", 1, "Error", "", NOW - timedelta(seconds=40)),
    )  # fmt: skip
    decision = decide(single, training_status(), seen(train_job=failed, pods=(pod,)), NOW)
    assert decision.status.phase == Phase.FAILED and decision.status.restarts is None


def test_restart_metric_counts_each_recorded_restart_by_cause() -> None:
    metrics = OperatorMetrics()
    pods = (rank(0), rank(1, disruption="PreemptionByScheduler"))
    before = training_status()
    decision = decide(make_run(), before, seen(train_job=train_job(), pods=pods), NOW)
    metrics.observe_restarts(before, decision.status)
    metrics.observe_restarts(decision.status, decision.status)  # the next pass: no new one
    sample = metrics.registry.get_sample_value
    assert sample("qwenft_operator_training_restarts_total", {"cause": "Disruption"}) == 1


def test_parse_job_uid_and_deletion_and_pod_disruption() -> None:
    job = parse_job(
        {
            "metadata": {"name": JOB, "uid": UID, "deletionTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"completions": 2},
            "status": {},
        }
    )
    assert (job.uid, job.deleting) == (UID, True)
    pod = parse_pod(
        {
            "metadata": {
                "name": f"{JOB}-1-x",
                "labels": {"finetune.qwenft.io/component": "train",
                           "batch.kubernetes.io/controller-uid": UID},
                "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
            },
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True",
                     "reason": "TerminationByKubelet", "message": "memory pressure"},
                ],
            },
        }
    )  # fmt: skip
    assert pod.failed and pod.job_uid == UID and pod.completion_index == 1
    assert pod.disruption == "TerminationByKubelet: memory pressure"
    assert pod.ended == "Evicted: The node was low on resource: memory."
    running = parse_pod({"metadata": {"name": "p"}, "status": {"phase": "Running"}})
    assert not running.failed and running.disruption is None and running.job_uid == ""
