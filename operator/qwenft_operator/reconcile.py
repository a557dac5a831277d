"""The reconcile decision: (run, status, observed children, now) -> new status + actions.

Pure and level-based: it looks at what exists now (:class:`Observed`, built from the
operator's watches by :mod:`observe`) and says what should exist next, so running it twice,
or after an operator restart, asks for nothing new. The run moves through

    Pending -> Validating -> Training -> Merging -> Deploying -> Ready | Succeeded
                                 |  Suspended (spec.suspend)
                                 '-> Failed (a reason from :mod:`conditions`)

Each step looks at its own child: no child yet -> create it (children are named by
:class:`~qwenft_operator.names.ChildNames`, so a second create finds the first); child
running -> report; child failed -> Failed with a reason the user can act on; child done ->
the next step. A running child whose pods no node fits reports the scheduler's verdict
(:mod:`scheduling`) and fails the run once they waited ``runPolicy.schedulingTimeoutSeconds``
(a later look is requeued for that moment). A multi-node training Job one of whose ranks
failed or was disrupted is replaced as a whole (:mod:`gang`). Each step writes into a
:class:`~qwenft_operator.draft.Draft`, which turns the new status into Events (every phase
change and failure) and a status patch. Before each step creates its Job (or the server
Deployment) the objects that child mounts are checked, and those of the children that run
are watched (:mod:`reference_checks`). Between validation and training the run's memory
estimate is checked against its GPUs (:mod:`gpu_fit`): a run that can't fit fails there.
A merge Job of another ``spec.inference.checkpoint`` than the spec's is redone
(:mod:`checkpoint_changes`); a server Deployment built from another spec than the run's
now (its digest differs) is replaced and rolls (:mod:`server_updates`).

This module is over 400 lines because it holds every phase step of one decision (the
pod-scheduling and stopped-pod reports included); splitting it by step is planned with the
runner's split by job.

It is over 300 lines because the decision walks one run through every phase, and each step's
function reads the ones before it; the gang, reference, queue and GPU-fit checks live in
their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from qwenft_operator import (
    checkpoint_changes,
    gang,
    gpu_fit,
    labels,
    reference_checks,
    scheduling,
    server_updates,
)
from qwenft_operator import conditions as cond
from qwenft_operator.actions import (
    Decision,
    DeleteChild,
    EmitEvent,
    Requeue,
    RunSmokeTest,
    SetJobSuspended,
)
from qwenft_operator.builders import config, merge, paths, serving, training, validation
from qwenft_operator.conditions import ConditionStatus
from qwenft_operator.draft import Draft
from qwenft_operator.observe import (
    JOB_BACKOFF_LIMIT_EXCEEDED,
    JOB_DEADLINE_EXCEEDED,
    DeploymentFacts,
    JobFacts,
    PodFacts,
    first_failure,
    report_message,
)
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import TERMINAL_PHASES, Phase
from qwenft_operator.queueing import QueueWait
from qwenft_operator.reference_checks import Running, Waiting
from qwenft_operator.references import Known, build_references
from qwenft_operator.status import Endpoint, Outputs, QwenFineTuneStatus, SmokeOutcome

# A Job can report its failure a moment before the watch shows the failed pod; wait this
# long for the pod (its exit code and message) before failing with the Job's message.
POD_REPORT_GRACE = timedelta(seconds=10)
POD_REPORT_RETRY = 2.0
# Seconds between looks at Kueue's Workload while a queued Job waits for admission (the
# Workload's conditions change without the Job changing, so no watch event says so).
QUEUE_RECHECK = 10.0


@dataclass(frozen=True)
class Observed:
    """The run's children as the watches see them; None means absent."""

    validate_job: JobFacts | None = None
    train_job: JobFacts | None = None
    merge_job: JobFacts | None = None
    deployment: DeploymentFacts | None = None
    pods: tuple[PodFacts, ...] = ()
    # What is known of the Secrets, ConfigMaps and claims the run's children mount
    # (absent: None); an object not in it is taken as present.
    references: Known = field(default_factory=dict)
    # The last finished smoke test of the run (any generation); None: none finished.
    smoke: SmokeOutcome | None = None
    # Kueue's reason for holding the queued training Job; None: not looked up or none given.
    queue_wait: QueueWait | None = None
    # One GPU's memory from the labels of the nodes the run targets; None: not looked up
    # or unknown (spec.resources.gpuMemory, when set, wins anyway).
    gpu_memory: gpu_fit.GpuMemory | None = None

    def pods_of(self, component: str) -> list[PodFacts]:
        return [p for p in self.pods if p.component == component]


def needs_queue_check(run: Run, observed: Observed) -> bool:
    """Whether the decision wants ``queue_wait``: a queued training Job Kueue holds."""
    job = observed.train_job
    queued = run.spec.scheduling.queue_name is not None and not run.spec.suspend
    return queued and job is not None and job.state == "Suspended"


def needs_gpu_memory(run: Run, observed: Observed) -> bool:
    """Whether the decision wants ``gpu_memory``: validation passed, training not created."""
    return (
        observed.train_job is None
        and gpu_fit.needs_node_lookup(run)
        and (
            (observed.validate_job is not None and observed.validate_job.state == "Succeeded")
            or _validator_exited_zero(observed)
        )
    )


def decide(run: Run, status: QwenFineTuneStatus, observed: Observed, now: datetime) -> Decision:
    """The next status and actions of ``run``."""
    draft = Draft(generation=run.generation, old=status, now=now)
    if status.phase in TERMINAL_PHASES:
        return Decision(status=status)
    problems = run.spec.cluster_problems()
    if problems:
        draft.fail(cond.VALIDATED, cond.INVALID_SPEC, "; ".join(problems))
        return draft.finish()
    if (
        _validate(draft, run, observed)
        and _train(draft, run, observed)
        and _merge(draft, run, observed)
    ):
        _serve(draft, run, observed)
    if draft.status.phase != Phase.FAILED:
        _check_running(draft, run, observed)
    return draft.finish()


def _check_running(d: Draft, run: Run, observed: Observed) -> None:
    """The references of the children that run or may start pods again."""
    names = run.names
    running = [
        Running(f"Job {job.name}", component, job.references)
        for job, component in (
            (observed.validate_job, "validate"),
            (observed.train_job, "train"),
            (observed.merge_job, "merge"),
        )
        if job is not None and not job.finished
    ]
    if observed.deployment is not None and run.spec.inference.enabled:
        deployment = observed.deployment
        running.append(
            Running(f"Deployment {names.serve_deployment}", "serve", deployment.references)
        )
    reference_checks.check_running(d, run, observed.references, running, observed.pods)


def decide_invalid_spec(
    generation: int, status: QwenFineTuneStatus, message: str, now: datetime
) -> Decision:
    """A stored spec the operator can't read (e.g. written before a stricter CRD)."""
    draft = Draft(generation=generation, old=status, now=now)
    if status.phase == Phase.FAILED:
        return Decision(status=status)
    draft.fail(cond.VALIDATED, cond.INVALID_SPEC, message)
    return draft.finish()


def _waiting_for_pod(job: JobFacts, pod: PodFacts | None, now: datetime) -> bool:
    """A failed Job whose failed pod the watch hasn't shown yet (see POD_REPORT_GRACE)."""
    if pod is not None or job.reason == JOB_DEADLINE_EXCEEDED or job.finished_at is None:
        return False
    return now - job.finished_at < POD_REPORT_GRACE


def _validator_exited_zero(observed: Observed) -> bool:
    """The validation pod exited 0: the data is valid, whatever the Job says yet.

    The Job controller folds pod results into the Job's status in batches (a second or
    more behind the pod); the validator's own exit is the fact the decision needs.
    """
    return any(pod.phase == "Succeeded" for pod in observed.pods_of("validate"))


def _validate(d: Draft, run: Run, observed: Observed) -> bool:
    """Validation: references, then the CPU-only validation Job. True once it passed."""
    names = run.names
    job = observed.validate_job
    if observed.train_job is not None:
        if not cond.is_true(d.status.conditions, cond.VALIDATED):
            d.set(cond.VALIDATED, "True", cond.SPEC_VALID, "references and dataset checked")
        return True
    if job is None:
        body = validation.build_validation_job(run)
        # Every object the spec names is checked before validation, not only those it mounts.
        waiting = Waiting(cond.VALIDATED, "False", Phase.PENDING)
        everything = build_references(run.spec)
        if not reference_checks.gate(d, run, observed.references, body, waiting, also=everything):
            return False
        d.create("Job", body, "validate_job")
        message = f"dataset validation Job {names.validate_job} running"
        d.set(cond.VALIDATED, "Unknown", cond.VALIDATION_RUNNING, message)
        d.phase(Phase.VALIDATING)
        return False
    d.child("validate_job", job.name)
    if job.state == "Succeeded" or _validator_exited_zero(observed):
        d.set(cond.VALIDATED, "True", cond.SPEC_VALID, "references and dataset checked")
        report = next((p.report for p in observed.pods_of("validate") if p.report), "")
        return gpu_fit.gate(d, run, report, observed.gpu_memory)
    if job.state != "Failed":
        d.phase(Phase.VALIDATING)
        step = _Step(cond.VALIDATED, "Unknown", "validate", "validation", job.name)
        if not _unschedulable(d, run, observed, step, wanted=1):
            message = f"dataset validation Job {job.name} running"
            d.set(cond.VALIDATED, "Unknown", cond.VALIDATION_RUNNING, message)
        return False
    pod = first_failure(observed.pods_of("validate"))
    if _waiting_for_pod(job, pod, d.now):
        d.actions.append(Requeue(POD_REPORT_RETRY))
        d.phase(Phase.VALIDATING)
        return False
    failure = pod.failure if pod else None
    report = report_message(failure.message) if failure else ""
    if failure is not None and failure.exit_code == validation.INVALID_DATA_EXIT_CODE:
        d.fail(cond.VALIDATED, cond.INVALID_DATASET, report or job.message)
    elif job.reason == JOB_DEADLINE_EXCEEDED:
        limit = run.spec.validation.active_deadline_seconds
        message = f"dataset validation ran longer than validation.activeDeadlineSeconds={limit}"
        d.fail(cond.VALIDATED, cond.DEADLINE_EXCEEDED, message)
    else:
        detail = failure.describe() if failure else f"{job.reason}: {job.message}"
        d.fail(cond.VALIDATED, cond.INVALID_SPEC, f"dataset validation failed: {detail}")
    return False


def _train(d: Draft, run: Run, observed: Observed) -> bool:
    """Training: ConfigMap, headless Service (multi-node) and the Indexed Job. True once it
    completed."""
    spec = run.spec
    queued = spec.scheduling.queue_name is not None
    job = observed.train_job
    rendezvous = training.needs_rendezvous_service(run)
    pods = observed.pods_of("train")
    if job is None:
        if rendezvous and gang.old_pods_remain(d, pods):
            return False
        body = training.build_train_job(run)
        waiting = Waiting(cond.TRAINING, "False", Phase.TRAINING)
        if not reference_checks.gate(d, run, observed.references, body, waiting):
            return False
        d.create("ConfigMap", config.build_config_map(run), "config_map")
        if rendezvous:
            d.create("Service", training.build_headless_service(run), "train_service")
        d.create("Job", body, "train_job")
        _report_stopped(d, run, suspended=spec.suspend, queued=queued, observed=observed)
        if not (spec.suspend or queued):
            gang.keep_restarting(d, "starting the new training Job")
        return False
    for slot in ("config_map", *(("train_service",) if rendezvous else ()), "train_job"):
        d.child(slot, getattr(run.names, slot))
    if job.state == "Succeeded":
        d.set(cond.TRAINING, "False", cond.TRAINING_SUCCEEDED, f"Job {job.name} completed")
        d.set(cond.TRAINED, "True", cond.TRAINING_SUCCEEDED, "results in " + paths.adapter_dir(run))
        d.status.outputs = (d.status.outputs or Outputs()).model_copy(
            update={"adapter": paths.adapter_dir(run)}
        )
        _clear_suspended(d)
        return True
    pending = _waiting_for_pod(job, first_failure(pods), d.now)
    if rendezvous and gang.restart(d, run, job, pods, pod_pending=pending):
        return False
    if job.state == "Failed":
        _train_failed(d, run, job, observed)
        return False
    if spec.suspend:
        if job.state != "Suspended":
            d.actions.append(SetJobSuspended(job.name, True))
        _report_stopped(d, run, suspended=True, queued=queued, observed=observed)
        return False
    if job.state == "Suspended":
        if not queued:
            d.actions.append(SetJobSuspended(job.name, False))
            _clear_suspended(d)
            d.set(cond.TRAINING, "True", cond.PODS_PENDING, "resumed; training pods starting")
            d.phase(Phase.TRAINING)
        else:
            _report_stopped(d, run, suspended=False, queued=True, observed=observed)
        return False
    _clear_suspended(d)
    d.phase(Phase.TRAINING)
    if job.ready >= job.completions:
        d.set(cond.TRAINING, "True", cond.TRAINING_RUNNING, f"{job.ready} training pod(s) running")
        d.status.start_time = d.status.start_time or job.start_time or d.now
    else:
        step = _Step(cond.TRAINING, "True", "train", "training", job.name)
        if not _unschedulable(d, run, observed, step, wanted=job.completions):
            message = f"{job.ready}/{job.completions} training pods ready"
            stopped = _last_stopped(observed.pods_of("train"))
            if stopped is not None and stopped.failure is not None:
                failure = report_message(stopped.failure.message)
                message += f"; pod {stopped.name} {failure}".rstrip()
            d.set(cond.TRAINING, "True", cond.PODS_PENDING, message)
            gang.keep_restarting(d, f"{job.ready}/{job.completions} training pods ready")
    return False


def _stopped(pod: PodFacts) -> bool:
    """The pod's trainer stopped on SIGTERM after a complete checkpoint (not a failure)."""
    return pod.failure is not None and pod.failure.exit_code == training.STOPPED_EXIT_CODE


def _last_stopped(pods: list[PodFacts]) -> PodFacts | None:
    """The training pod that stopped last (preempted, evicted, deleted), if any."""
    stopped = [p for p in pods if _stopped(p)]
    if not stopped:
        return None
    never = datetime.min.replace(tzinfo=None)

    def key(pod: PodFacts) -> datetime:
        at = pod.failure.finished_at if pod.failure else None
        return at.replace(tzinfo=None) if at else never

    return max(stopped, key=key)


@dataclass(frozen=True)
class _Step:
    """A step whose Job's pods may wait for a node, and the condition that reports it."""

    condition: str
    status: ConditionStatus  # the condition's status while the step's Job runs
    component: str
    noun: str
    job: str


def _unschedulable(d: Draft, run: Run, observed: Observed, step: _Step, *, wanted: int) -> bool:
    """Report the step's pods that no node fits; True if there are any.

    Once they have waited ``runPolicy.schedulingTimeoutSeconds`` (from their own
    PodScheduled time, which survives an operator restart) the run fails and the Job is
    deleted with its pods, so scheduled ranks of a gang give back their GPUs; until then a
    later look is requeued for that moment.
    """
    waiting = scheduling.find_unschedulable(
        observed.pods_of(step.component), wanted=wanted, noun=step.noun, now=d.now
    )
    if waiting is None:
        return False
    timeout = run.spec.run_policy.scheduling_timeout_seconds
    deadline = waiting.deadline(timeout)
    if d.now >= deadline:
        message = f"{waiting.message} (for {timeout}s, runPolicy.schedulingTimeoutSeconds)"
        d.fail(step.condition, cond.UNSCHEDULABLE, message)
        d.actions.append(DeleteChild("Job", step.job))
        return True
    at = deadline.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = f"{waiting.message} (the run fails at {at}, runPolicy.schedulingTimeoutSeconds)"
    d.set(step.condition, step.status, cond.PODS_UNSCHEDULABLE, message)
    d.actions.append(Requeue((deadline - d.now).total_seconds()))
    return True


def _report_stopped(
    d: Draft, run: Run, *, suspended: bool, queued: bool, observed: Observed
) -> None:
    if suspended:
        message = "spec.suspend is true; training pods are stopped"
        d.set(cond.SUSPENDED, "True", cond.SUSPENDED_BY_USER, message)
        d.set(cond.TRAINING, "False", cond.SUSPENDED_BY_USER, message)
        d.phase(Phase.SUSPENDED)
    elif queued:
        message = f"waiting for Kueue to admit it (queue {run.spec.scheduling.queue_name})"
        if observed.queue_wait is not None:
            message += f"; {observed.queue_wait.describe()}"
        d.set(cond.TRAINING, "False", cond.QUEUED, message)
        _clear_suspended(d)
        d.phase(Phase.TRAINING)
        d.actions.append(Requeue(QUEUE_RECHECK))
    else:
        message = f"0/{run.spec.resources.nodes} training pods ready"
        d.set(cond.TRAINING, "True", cond.PODS_PENDING, message)
        d.phase(Phase.TRAINING)


def _clear_suspended(d: Draft) -> None:
    if cond.is_true(d.status.conditions, cond.SUSPENDED):
        message = "training continues from the newest checkpoint"
        d.set(cond.SUSPENDED, "False", cond.RESUMED, message)
        d.actions.append(EmitEvent("Normal", cond.RESUMED, message))


def _train_failed(d: Draft, run: Run, job: JobFacts, observed: Observed) -> None:
    pods = observed.pods_of("train")
    # a pod that stopped with a checkpoint is not why the Job failed; name a real failure
    pod = first_failure([p for p in pods if not _stopped(p)]) or first_failure(pods)
    if _waiting_for_pod(job, pod, d.now):
        d.actions.append(Requeue(POD_REPORT_RETRY))
        return
    last = f"pod {pod.name}: {pod.failure.describe()}" if pod and pod.failure else job.message
    policy = run.spec.run_policy
    if job.reason == JOB_DEADLINE_EXCEEDED:
        reason = cond.DEADLINE_EXCEEDED
        message = f"training ran longer than activeDeadlineSeconds={policy.active_deadline_seconds}"
    elif job.reason == JOB_BACKOFF_LIMIT_EXCEEDED:
        reason = cond.BACKOFF_LIMIT_EXCEEDED
        message = f"{job.failed} pod failure(s), backoffLimit {policy.backoff_limit}; last {last}"
    else:
        reason, message = cond.TRAINING_FAILED, last
    d.set(cond.TRAINED, "False", reason, message)
    d.fail(cond.TRAINING, reason, message)


def _merge(d: Draft, run: Run, observed: Observed) -> bool:
    """Merging, when the spec asks for it or vLLM needs it. True once merged or skipped."""
    if not serving.needs_merge(run):
        if cond.get_condition(d.status.conditions, cond.MERGED) is None:
            d.set(cond.MERGED, "False", cond.MERGE_SKIPPED, "no merge: disabled or not needed")
        return True
    job = observed.merge_job
    wanted = labels.checkpoint_value(run.spec.inference.checkpoint)
    if job is not None and job.checkpoint != wanted:
        checkpoint_changes.redo_merge(d, job, observed.deployment, wanted)
        return False
    if job is None:
        body = merge.build_merge_job(run)
        waiting = Waiting(cond.MERGED, "False", Phase.MERGING)
        if not reference_checks.gate(d, run, observed.references, body, waiting):
            return False
        d.create("Job", body, "merge_job")
        d.set(cond.MERGED, "Unknown", cond.MERGE_RUNNING, f"Job {run.names.merge_job} running")
        d.phase(Phase.MERGING)
        return False
    d.child("merge_job", job.name)
    if job.state == "Succeeded":
        merged = paths.merged_dir(run)
        d.set(cond.MERGED, "True", cond.MERGE_SUCCEEDED, "merged model in " + merged)
        d.status.outputs = (d.status.outputs or Outputs()).model_copy(update={"merged": merged})
        return True
    if job.state == "Failed":
        pod = first_failure(observed.pods_of("merge"))
        if _waiting_for_pod(job, pod, d.now):
            d.actions.append(Requeue(POD_REPORT_RETRY))
            return False
        detail = report_message(pod.failure.message) if pod and pod.failure else ""
        if pod and pod.failure and pod.failure.exit_code == merge.CHECKPOINT_NOT_FOUND_EXIT_CODE:
            d.fail(cond.MERGED, cond.CHECKPOINT_NOT_FOUND, detail or job.message)
            return False
        code = f"exit code {pod.failure.exit_code}: " if pod and pod.failure else ""
        d.fail(cond.MERGED, cond.MERGE_FAILED, code + (detail or job.message))
        return False
    d.phase(Phase.MERGING)
    step = _Step(cond.MERGED, "Unknown", "merge", "merge", job.name)
    if not _unschedulable(d, run, observed, step, wanted=1):
        d.set(cond.MERGED, "Unknown", cond.MERGE_RUNNING, f"Job {job.name} running")
    return False


def _serve(d: Draft, run: Run, observed: Observed) -> None:
    """Deploying: the server Deployment and Service; Ready once available."""
    names = run.names
    deployment = observed.deployment
    server = run.spec.inference.server
    if not run.spec.inference.enabled or server is not None:
        if deployment is not None:
            d.actions.append(DeleteChild("Deployment", names.serve_deployment))
            d.actions.append(DeleteChild("Service", names.serve_service))
        if server is None:
            d.set(cond.READY, "False", cond.INFERENCE_DISABLED, "spec.inference.enabled is false")
            d.status.endpoint = None
        else:
            message = (
                f"the adapter is served by QwenModelServer {server} (its status.adapters "
                "says whether it joined)"
            )
            d.set(cond.READY, "False", cond.SERVED_BY_MODEL_SERVER, message)
            d.status.endpoint = Endpoint(
                url=serving.endpoint_url(run), model_name=run.served_model_name
            )
        d.phase(Phase.SUCCEEDED)
        d.status.completion_time = d.status.completion_time or d.now
        return
    d.status.endpoint = Endpoint(url=serving.endpoint_url(run), model_name=run.served_model_name)
    body = serving.build_serve_deployment(run, serving.build_serve_target(run))
    if deployment is None:
        waiting = Waiting(cond.READY, "False", Phase.DEPLOYING)
        if not reference_checks.gate(d, run, observed.references, body, waiting):
            return
        d.create("Service", serving.build_serve_service(run), "serve_service")
        d.create("Deployment", body, "serve_deployment")
        d.set(cond.READY, "False", cond.DEPLOYING, f"Deployment {names.serve_deployment} created")
        d.phase(Phase.DEPLOYING)
        return
    d.child("serve_deployment", deployment.name)
    d.child("serve_service", names.serve_service)
    missing = _checkpoint_not_found(observed.pods_of("serve"))
    if server_updates.outdated(deployment, body):
        server_updates.update(d, run, observed.references, deployment, body)
    elif missing is not None:
        # the server exits at start and would restart forever, holding its GPUs
        d.fail(cond.READY, cond.CHECKPOINT_NOT_FOUND, missing)
        d.actions.append(DeleteChild("Deployment", names.serve_deployment))
        d.actions.append(DeleteChild("Service", names.serve_service))
        d.status.endpoint = None
    elif deployment.failed:
        d.fail(cond.READY, cond.DEPLOY_FAILED, deployment.message)
    elif deployment.available:
        d.set(cond.READY, "True", cond.ENDPOINT_READY, f"serving {run.served_model_name}")
        d.phase(Phase.READY)
        d.status.completion_time = d.status.completion_time or d.now
        _smoke_test(d, run, observed)
    else:
        message = f"{deployment.ready_replicas}/{deployment.replicas} server replicas ready"
        d.set(cond.READY, "False", cond.DEPLOYING, message)
        d.phase(Phase.DEPLOYING)


def _checkpoint_not_found(pods: list[PodFacts]) -> str | None:
    """The error of a server that found no checkpoint spec.inference.checkpoint names."""
    for pod in pods:
        failure = pod.failure
        if failure is not None and failure.exit_code == serving.CHECKPOINT_NOT_FOUND_EXIT_CODE:
            return report_message(failure.message) or failure.describe()
    return None


def _smoke_test(d: Draft, run: Run, observed: Observed) -> None:
    """Ready: the evaluationPrompts, sent once per generation; the outcome is recorded.

    A failed test (or an endpoint that never answered) is reported by the SmokeTested
    condition and an Event; the run stays Ready.
    """
    prompts = run.spec.evaluation_prompts
    endpoint = d.status.endpoint
    if not prompts or endpoint is None or endpoint.url is None or endpoint.model_name is None:
        return
    done = cond.get_condition(d.status.conditions, cond.SMOKE_TESTED)
    if done and done.observed_generation == run.generation and done.status != "Unknown":
        return
    outcome = observed.smoke
    if outcome is None or outcome.generation != run.generation:
        message = f"sending {len(prompts)} evaluation prompts to {endpoint.url}"
        d.set(cond.SMOKE_TESTED, "Unknown", cond.SMOKE_TEST_RUNNING, message)
        d.actions.append(
            RunSmokeTest(endpoint.url, endpoint.model_name, tuple(prompts), run.generation)
        )
        return
    result = outcome.result
    d.status.smoke_test = result
    if result.passed:
        message = f"{result.total} of {result.total} evaluation prompts passed"
        d.set(cond.SMOKE_TESTED, "True", cond.SMOKE_TEST_PASSED, message)
        d.actions.append(EmitEvent("Normal", cond.SMOKE_TEST_PASSED, message))
        return
    reason = cond.SMOKE_TEST_FAILED if outcome.reachable else cond.ENDPOINT_UNREACHABLE
    message = f"{result.failed} of {result.total} evaluation prompts failed: {result.message}"
    d.set(cond.SMOKE_TESTED, "False", reason, message)
    d.actions.append(EmitEvent("Warning", reason, message))
