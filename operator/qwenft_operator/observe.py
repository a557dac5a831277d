"""Typed facts about a run's children, parsed from the objects the API returns.

The reconcile decision never reads raw Job, Pod or Deployment dicts: the operator's watches
turn each object into a small frozen fact here (:func:`parse_job`, :func:`parse_pod`,
:func:`parse_deployment`), which is all the decision needs and all the operator keeps in
memory per child. Parsing follows the Kubernetes API: a Job has finished when its
``Complete`` or ``Failed`` condition is True (``SuccessCriteriaMet`` / ``FailureTarget``
say so a little earlier), its failure reason is the condition's reason
(``BackoffLimitExceeded``, ``DeadlineExceeded``, ``PodFailurePolicy``); a failed
container's exit code and termination message are in ``state.terminated`` (or
``lastState.terminated`` after a restart); a pod the scheduler can't place has
``PodScheduled`` False with reason ``Unschedulable`` and the scheduler's message; a pod
stopped by a disruption (preemption, eviction, node loss) has ``DisruptionTarget`` True
with the disruption's reason and message; a container the kubelet can't start for a
missing Secret or ConfigMap waits with reason ``CreateContainerConfigError``. A Job's or
Deployment's facts carry the objects its pod template mounts
(:func:`qwenft_operator.references.template_references`), and ConfigMaps and claims into
:class:`~qwenft_operator.references.Found` (absent once being deleted). A Job's and a
Deployment's facts carry the checkpoint choice they were made for
(``labels.CHECKPOINT_ANNOTATION`` on the Job, on the Deployment's pod template; ``final``
where it is missing); a Deployment's facts, the digest of the spec it was built with
(``labels.SPEC_DIGEST_ANNOTATION``), and it is available only once every replica runs its
newest pod template (``updatedReplicas``), so a rollout in progress isn't taken as done.

It is over 300 lines because a pod's termination message, scheduling verdict and disruption
are each parsed here into typed facts, so the decision reads no raw object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from qwenft_operator import labels
from qwenft_operator.references import Found, Reference, template_references

JobState = Literal["Suspended", "Active", "Succeeded", "Failed"]

# Job condition reasons (batch/v1).
JOB_BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
JOB_DEADLINE_EXCEEDED = "DeadlineExceeded"
# The label the Job controller puts on its pods: the Job's UID.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
# The PodScheduled condition's reason when no node fits the pod (core/v1).
POD_UNSCHEDULABLE = "Unschedulable"
# A container's waiting reason when a Secret or ConfigMap it reads is missing (kubelet).
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"

_MESSAGE_FIELD = re.compile(r'"message"\s*:\s*("(?:[^"\\]|\\.)*")')
_REASON_FIELD = re.compile(r'"reason"\s*:\s*"([A-Za-z]+)"')


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API (``2026-01-02T03:04:05Z``), or None."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _true(conditions: Mapping[str, Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    found = conditions.get(type_)
    return found if found is not None and found.get("status") == "True" else None


@dataclass(frozen=True)
class JobFacts:
    """What the decision needs to know about one Job."""

    name: str
    state: JobState
    uid: str = ""
    deleting: bool = False  # metadata.deletionTimestamp is set: its pods are going
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    completions: int = 1
    reason: str = ""  # the Failed (or FailureTarget) condition's reason
    message: str = ""  # and its message
    start_time: datetime | None = None
    finished_at: datetime | None = None
    references: tuple[Reference, ...] = ()  # what its pod template mounts
    # The checkpoint choice a merge Job merges (labels.CHECKPOINT_ANNOTATION; "final"
    # when the annotation is missing, as on Jobs of operators that did not record it).
    checkpoint: str = labels.FINAL_CHECKPOINT

    @property
    def finished(self) -> bool:
        return self.state in ("Succeeded", "Failed")


def parse_job(body: Mapping[str, Any]) -> JobFacts:
    """Facts of a batch/v1 Job."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    conditions = _conditions(status)
    failed = _true(conditions, "Failed") or _true(conditions, "FailureTarget")
    done = _true(conditions, "Complete") or _true(conditions, "SuccessCriteriaMet")
    state: JobState
    if failed is not None:
        state = "Failed"
    elif done is not None:
        state = "Succeeded"
    elif spec.get("suspend"):
        state = "Suspended"
    else:
        state = "Active"
    ended = failed or done
    meta = body["metadata"]
    return JobFacts(
        name=str(meta["name"]),
        state=state,
        uid=str(meta.get("uid") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        completions=int(spec.get("completions") or 1),
        reason=str(failed.get("reason") or "") if failed else "",
        message=str(failed.get("message") or "") if failed else "",
        start_time=parse_time(status.get("startTime")),
        finished_at=parse_time(ended.get("lastTransitionTime")) if ended else None,
        references=template_references(body),
        checkpoint=_checkpoint(meta),
    )


def _checkpoint(meta: Mapping[str, Any]) -> str:
    """The recorded checkpoint choice of an object's metadata ("final" when absent)."""
    annotations = meta.get("annotations") or {}
    return str(annotations.get(labels.CHECKPOINT_ANNOTATION) or labels.FINAL_CHECKPOINT)


@dataclass(frozen=True)
class Termination:
    """How a container ended."""

    container: str
    exit_code: int
    reason: str = ""
    message: str = ""
    finished_at: datetime | None = None

    def describe(self) -> str:
        """``exit code 3 (Error): <message>`` for a condition message."""
        text = f"container {self.container} exited with code {self.exit_code}"
        if self.reason:
            text += f" ({self.reason})"
        return f"{text}: {self.message.strip()}" if self.message.strip() else text


@dataclass(frozen=True)
class Unschedulable:
    """The scheduler's verdict on a pod it found no node for."""

    message: str  # e.g. "0/5 nodes are available: 4 Insufficient nvidia.com/gpu, ..."
    # When the pod was first found unschedulable (the PodScheduled condition's
    # lastTransitionTime, else the pod's creation): the API's clock, so a restarted
    # operator counts from the same moment.
    since: datetime | None = None


@dataclass(frozen=True)
class PodFacts:
    """What the decision needs to know about one pod of a run."""

    name: str
    component: str
    phase: str
    node_name: str | None = None
    pod_ip: str | None = None
    completion_index: int | None = None
    ready: bool = False
    failure: Termination | None = None  # the first container that exited non-zero
    unschedulable: Unschedulable | None = None  # no node fits it (yet)
    # "PreemptionByScheduler: ..." when DisruptionTarget is True (preempted, evicted, its
    # node lost or drained): a pod failure the Job's policy does not count.
    disruption: str | None = None
    job_uid: str = ""  # the owning Job's UID (label batch.kubernetes.io/controller-uid)
    # status.reason and status.message of a pod that failed without a container exit
    # code ("Evicted: The node was low on resource: memory.")
    ended: str = ""

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    # The kubelet's message for a container it can't start: a Secret or ConfigMap (or a
    # key of one) is missing, e.g. 'secret "hf-token" not found'.
    config_error: str | None = None
    # The termination message of a container that exited 0 (the validator's short report).
    report: str = ""


def _terminated(statuses: Iterable[Mapping[str, Any]]) -> Termination | None:
    for item in statuses:
        for key in ("state", "lastState"):
            done = (item.get(key) or {}).get("terminated")
            if done and int(done.get("exitCode") or 0) != 0:
                return Termination(
                    container=str(item.get("name") or ""),
                    exit_code=int(done["exitCode"]),
                    reason=str(done.get("reason") or ""),
                    message=str(done.get("message") or ""),
                    finished_at=parse_time(done.get("finishedAt")),
                )
    return None


def _unschedulable(meta: Mapping[str, Any], status: Mapping[str, Any]) -> Unschedulable | None:
    scheduled = _conditions(status).get("PodScheduled") or {}
    if scheduled.get("status") != "False" or scheduled.get("reason") != POD_UNSCHEDULABLE:
        return None
    since = parse_time(scheduled.get("lastTransitionTime"))
    return Unschedulable(
        message=str(scheduled.get("message") or "").strip(),
        since=since or parse_time(meta.get("creationTimestamp")),
    )


def _disruption(status: Mapping[str, Any]) -> str | None:
    found = _true(_conditions(status), "DisruptionTarget")
    if found is None:
        return None
    reason, message = str(found.get("reason") or ""), str(found.get("message") or "").strip()
    return ": ".join(part for part in (reason, message) if part) or "DisruptionTarget"


def _succeeded_report(statuses: Iterable[Mapping[str, Any]]) -> str:
    for item in statuses:
        done = (item.get("state") or {}).get("terminated") or {}
        if done and int(done.get("exitCode") or 0) == 0 and done.get("message"):
            return str(done["message"])
    return ""


def _config_error(statuses: Iterable[Mapping[str, Any]]) -> str | None:
    for item in statuses:
        waiting = (item.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == CREATE_CONTAINER_CONFIG_ERROR:
            return str(waiting.get("message") or CREATE_CONTAINER_CONFIG_ERROR)
    return None


def parse_pod(body: Mapping[str, Any]) -> PodFacts:
    """Facts of a Pod (a Job's or a Deployment's)."""
    meta = body["metadata"]
    pod_labels = meta.get("labels") or {}
    status = body.get("status") or {}
    node_name = (body.get("spec") or {}).get("nodeName")
    index = (meta.get("annotations") or {}).get(labels.JOB_COMPLETION_INDEX_ANNOTATION)
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    return PodFacts(
        name=str(meta["name"]),
        component=str(pod_labels.get(labels.COMPONENT_KEY, "")),
        phase=str(status.get("phase") or "Pending"),
        node_name=node_name,
        pod_ip=status.get("podIP"),
        completion_index=int(index) if index is not None and str(index).isdigit() else None,
        ready=_true(_conditions(status), "Ready") is not None,
        failure=_terminated(statuses),
        unschedulable=None if node_name else _unschedulable(meta, status),
        disruption=_disruption(status),
        job_uid=str(pod_labels.get(JOB_UID_LABEL) or pod_labels.get("controller-uid") or ""),
        ended=": ".join(
            str(part).strip() for part in (status.get("reason"), status.get("message")) if part
        ),
        config_error=_config_error(statuses),
        report=_succeeded_report(status.get("containerStatuses") or []),
    )


@dataclass(frozen=True)
class DeploymentFacts:
    """What the decision needs to know about the server Deployment."""

    name: str
    replicas: int
    ready_replicas: int = 0
    available: bool = False
    failed: bool = False  # rollout stuck: ProgressDeadlineExceeded or a ReplicaFailure
    message: str = ""
    references: tuple[Reference, ...] = ()  # what its pod template mounts
    # The checkpoint choice its pod template serves (labels.CHECKPOINT_ANNOTATION; "final"
    # when missing); the rollout may still be on its way to it.
    checkpoint: str = labels.FINAL_CHECKPOINT
    # The digest of the spec it was built with (labels.SPEC_DIGEST_ANNOTATION on its
    # metadata; "" when missing, as on Deployments of operators that did not record it).
    digest: str = ""


def parse_deployment(body: Mapping[str, Any]) -> DeploymentFacts:
    """Facts of an apps/v1 Deployment."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    conditions = _conditions(status)
    wanted = spec.get("replicas")
    replicas = 1 if wanted is None else int(wanted)
    available_replicas = int(status.get("availableReplicas") or 0)
    # pods of the newest template: until they are all there, old pods may be what's available
    updated_replicas = int(status.get("updatedReplicas") or 0)
    progressing = conditions.get("Progressing") or {}
    stuck = progressing.get("status") == "False" and (
        progressing.get("reason") == "ProgressDeadlineExceeded"
    )
    replica_failure = _true(conditions, "ReplicaFailure")
    failure = replica_failure or (progressing if stuck else None)
    current = int(status.get("observedGeneration") or 0) >= int(
        body["metadata"].get("generation") or 0
    )
    return DeploymentFacts(
        name=str(body["metadata"]["name"]),
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas") or 0),
        available=current
        and updated_replicas >= replicas
        and available_replicas >= replicas
        and (_true(conditions, "Available") is not None or replicas == 0),
        failed=failure is not None,
        message=str(failure.get("message") or failure.get("reason") or "") if failure else "",
        references=template_references(body),
        checkpoint=_checkpoint((spec.get("template") or {}).get("metadata") or {}),
        digest=str(
            (body["metadata"].get("annotations") or {}).get(labels.SPEC_DIGEST_ANNOTATION) or ""
        ),
    )


def _being_deleted(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def parse_config_map(body: Mapping[str, Any]) -> Found | None:
    """A ConfigMap as a reference check needs it: its keys (None: being deleted)."""
    if _being_deleted(body):
        return None
    return Found(keys=frozenset({*(body.get("data") or {}), *(body.get("binaryData") or {})}))


def parse_claim(body: Mapping[str, Any]) -> Found | None:
    """A claim as a reference check needs it: None once being deleted (a claim in use
    waits for its pods to go, and no new pod may mount it)."""
    return None if _being_deleted(body) else Found()


def first_failure(pods: Iterable[PodFacts]) -> PodFacts | None:
    """The pod whose container failed first (by finish time; unknown times last)."""
    failed = [p for p in pods if p.failure is not None]
    if not failed:
        return None
    far = datetime.max.replace(tzinfo=None)

    def key(pod: PodFacts) -> tuple[int, datetime]:
        at = pod.failure.finished_at if pod.failure else None
        return (0, at.replace(tzinfo=None)) if at else (1, far)

    return min(failed, key=key)


def report_message(text: str) -> str:
    """The one-line ``message`` of a JSON report in a termination message.

    The validator prints its report as JSON; with ``FallbackToLogsOnError`` the
    termination message may be only the tail of the log, so a whole-JSON parse is tried
    first, then the ``"message"`` field alone, then the last non-empty line.
    """
    stripped = text.strip()
    if not stripped:
        return ""
    try:
        parsed = json.loads(stripped)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    matches = _MESSAGE_FIELD.findall(stripped)
    if matches:
        try:
            return str(json.loads(matches[-1]))
        except ValueError:
            pass
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def report_reason(text: str) -> str:
    """The ``reason`` of a JSON report in a termination message ("" when there is none)."""
    found = _REASON_FIELD.search(text)
    return found.group(1) if found else ""
