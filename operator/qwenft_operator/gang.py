"""Gang restarts of multi-node training: when one rank ends early, every rank restarts.

A rank of a multi-node run that ends early leaves the others waiting in a collective for
it (until the collective timeout), and a replacement pod can't join the rendezvous the
others already hold. So a multi-node training Job fails as a whole at the first pod
failure it counts (its ``backoffLimit`` is 0, see :mod:`~qwenft_operator.builders.training`),
and this module replaces the whole Job, whose fresh ranks resume from the newest complete
checkpoint. A restart has a cause:

- ``Failure``: the Job failed (``BackoffLimitExceeded``) because a rank exited non-zero,
  or its pod failed without an exit code. It counts against ``runPolicy.backoffLimit``;
  the failure after that many fails the run with reason ``BackoffLimitExceeded``.
- ``Disruption``: a rank's pod was disrupted (``DisruptionTarget``: preemption, eviction,
  node drain or loss) or its trainer stopped with a complete checkpoint (exit code 75).
  The Job's pod failure policy ignores such a pod and would replace it alone; the gang is
  replaced at once instead, without counting. When the Job failed and one of its pods was
  disrupted, that is the cause (the other ranks' failures follow from it); otherwise it
  is the first rank that failed on its own, not one whose trainer said ``PeerLost``.

A restart takes two decisions, each derived from the objects alone, so an operator that
restarts in between repeats neither: the first records it in the status (``restarts``,
``disruptionRestarts``, ``lastRestart`` with the replaced Job's UID, the ``Training``
condition's reason ``Restarting`` with the cause) with a Warning Event; the next, seeing
that UID recorded, deletes the Job in the foreground (its pods go first). Once the Job and
its pods are gone, the training step creates a new Job: two training Jobs never exist at
once, and the condition stays ``Restarting`` until every new rank runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qwenft_trainer import exit_codes

from qwenft_operator import conditions as cond
from qwenft_operator.actions import DeleteChild, EmitEvent, Requeue
from qwenft_operator.builders import training
from qwenft_operator.draft import Draft
from qwenft_operator.observe import JOB_BACKOFF_LIMIT_EXCEEDED, JobFacts, PodFacts, report_reason
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.status import Restart

# Seconds from recording a restart to deleting the Job (the next decision).
RESTART_RETRY = 0.5
# Seconds between looks while a replaced Job's pods are still listed.
OLD_PODS_RETRY = 1.0


@dataclass(frozen=True)
class Cause:
    """Why the gang restarts: the rank whose pod ended first, and how it ended."""

    disruption: bool
    how: str  # "container trainer exited with code 1 (Error): ..."
    pod: PodFacts | None = None

    def describe(self) -> str:
        if self.pod is None:
            return self.how
        rank = "" if self.pod.completion_index is None else f"rank {self.pod.completion_index} "
        return f"{rank}(pod {self.pod.name}) {self.how}"


def _disrupted(pod: PodFacts) -> bool:
    """Stopped by a disruption, or with a checkpoint: the Job's policy does not count it."""
    stopped = pod.failure is not None and pod.failure.exit_code == training.STOPPED_EXIT_CODE
    return pod.disruption is not None or (pod.failed and stopped)


def _peer_lost(pod: PodFacts) -> bool:
    """The rank failed because another rank was lost (its trainer said so)."""
    return pod.failure is not None and report_reason(pod.failure.message) == exit_codes.PEER_LOST


def _how(pod: PodFacts) -> str:
    """How a pod that ended (or is being stopped) ended."""
    failure = pod.failure
    if pod.disruption is not None:
        return f"disrupted: {pod.disruption}"
    if failure is not None and failure.exit_code == training.STOPPED_EXIT_CODE:
        return f"stopped with a checkpoint (exit code {failure.exit_code})"
    if failure is not None:
        return failure.describe()
    return f"failed: {pod.ended}" if pod.ended else "failed without an exit code"


def _first(pods: list[PodFacts]) -> PodFacts | None:
    """The pod that ended first (by its container's finish time; unknown times last)."""
    if not pods:
        return None
    never = datetime.max

    def key(pod: PodFacts) -> tuple[int, datetime]:
        at = pod.failure.finished_at if pod.failure else None
        return (0, at.replace(tzinfo=None)) if at else (1, never)

    return min(pods, key=key)


def find_cause(job: JobFacts, pods: list[PodFacts]) -> Cause | None:
    """Why the Job's gang must restart now, or None.

    Only the Job's own pods count (by the Job's UID). A disrupted rank (or one stopped
    with a checkpoint) restarts the gang at once, and when the Job failed it is the cause
    too: the other ranks' failures follow from it. Otherwise a failed Job's cause is the
    rank that failed first on its own, not one that only lost its peer (``PeerLost``); when
    those are all there is, the first of them. A rank that failed while the Job still runs
    is left to the Job controller, which counts it and fails the Job; a Job failed for
    another reason (deadline, exit code 3) is not restarted.
    """
    mine = [p for p in pods if p.job_uid in ("", job.uid)]
    failed = job.state == "Failed" and job.reason == JOB_BACKOFF_LIMIT_EXCEEDED
    if job.state != "Active" and not failed:
        return None
    disrupted = _first([p for p in mine if _disrupted(p)])
    if disrupted is not None:
        return Cause(disruption=True, how=_how(disrupted), pod=disrupted)
    if not failed:
        return None
    ended = [p for p in mine if p.failed]
    first = _first([p for p in ended if not _peer_lost(p)]) or _first(ended)
    if first is None:
        return Cause(disruption=False, how=job.message or job.reason)
    return Cause(disruption=False, how=_how(first), pod=first)


def _real_failures(d: Draft) -> int:
    return (d.status.restarts or 0) - (d.status.disruption_restarts or 0)


def restart(d: Draft, run: Run, job: JobFacts, pods: list[PodFacts], *, pod_pending: bool) -> bool:
    """Record or carry out a gang restart of ``job``; True when this decision is about it.

    ``pod_pending``: the Job failed a moment ago and the watch has not shown the failed pod
    yet (its exit code names the cause); the decision waits for it briefly.
    """
    record = d.status.last_restart
    if record is not None and record.job_uid == job.uid and job.uid:
        if not job.deleting:
            d.actions.append(DeleteChild("Job", job.name))
        _report(d, _waiting_for(f"Job {job.name}", [p for p in pods if p.job_uid in ("", job.uid)]))
        return True
    cause = find_cause(job, pods)
    if cause is None:
        return False
    if cause.pod is None and pod_pending:
        return False  # the caller waits for the pod's report
    policy = run.spec.run_policy
    failures = _real_failures(d) + (0 if cause.disruption else 1)
    if not cause.disruption and failures > policy.backoff_limit:
        message = (
            f"{failures} rank failure(s), backoffLimit {policy.backoff_limit}; "
            f"last {cause.describe()}"
        )
        d.set(cond.TRAINED, "False", cond.BACKOFF_LIMIT_EXCEEDED, message)
        d.fail(cond.TRAINING, cond.BACKOFF_LIMIT_EXCEEDED, message)
        return True
    d.status.restarts = (d.status.restarts or 0) + 1
    if cause.disruption:
        d.status.disruption_restarts = (d.status.disruption_restarts or 0) + 1
    d.status.last_restart = Restart(
        time=d.now,
        cause="Disruption" if cause.disruption else "Failure",
        rank=cause.pod.completion_index if cause.pod else None,
        pod=cause.pod.name if cause.pod else None,
        message=cause.how,
        job_uid=job.uid,
    )
    counted = (
        "a disruption, not counted against backoffLimit"
        if cause.disruption
        else f"failure {failures} of backoffLimit {policy.backoff_limit}"
    )
    message = (
        f"restart {d.status.restarts} ({counted}): {cause.describe()}; every rank restarts "
        "from the newest complete checkpoint"
    )
    d.set(cond.TRAINING, "True", cond.RESTARTING, message)
    d.phase(Phase.TRAINING)
    d.actions.append(EmitEvent("Warning", cond.RESTARTING, message))
    d.actions.append(Requeue(RESTART_RETRY))
    return True


def _waiting_for(job: str, pods: list[PodFacts]) -> str:
    """What the restart waits for (a pod on an unreachable node stays until it is removed)."""
    names = ", ".join(sorted(p.name for p in pods))
    return f"waiting for {job} and its pods to be gone" + (f" ({names})" if names else "")


def old_pods_remain(d: Draft, pods: list[PodFacts]) -> bool:
    """Whether pods of a replaced Job are still listed (then no new Job yet: wait)."""
    if not pods:
        return False
    _report(d, _waiting_for("the replaced Job", pods))
    d.actions.append(Requeue(OLD_PODS_RETRY))
    return True


def keep_restarting(d: Draft, detail: str) -> None:
    """While a restart's new Job starts, the Training condition stays ``Restarting``."""
    before = cond.get_condition(d.old.conditions, cond.TRAINING)
    if before is not None and before.reason == cond.RESTARTING and d.status.last_restart:
        _report(d, detail)


def _report(d: Draft, detail: str) -> None:
    record = d.status.last_restart
    cause = ""
    if record is not None:
        rank = "" if record.rank is None else f"rank {record.rank} "
        pod = f"(pod {record.pod}) " if record.pod else ""
        cause = f" after {record.cause.lower()} of {rank}{pod}{record.message}".rstrip()
    number = d.status.restarts or 0
    d.set(cond.TRAINING, "True", cond.RESTARTING, f"restart {number}{cause}; {detail}")
    d.phase(Phase.TRAINING)
