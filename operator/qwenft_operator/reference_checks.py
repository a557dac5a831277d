"""The decision's reference checks: before a child is created, and while it runs.

Part of the pure decision (:mod:`qwenft_operator.reconcile`). Before the step that creates
a Job or the server Deployment, :func:`gate` looks at the objects that child's pod spec
mounts (:func:`~qwenft_operator.references.template_references` of the very body about to
be created): if one is missing, nothing is created and the step's condition says
``MissingReference``, naming the object, the spec field and the fix; the step goes on as
soon as the object exists (the watch of ConfigMaps and claims wakes the run; a missing
Secret is looked for again after :func:`~qwenft_operator.references.secret_retry_after`).
:func:`check_running` looks at the objects of the children that run (their pods may
restart and then wait for them) and at pods the kubelet can't start for a missing Secret
or ConfigMap; the ``ResolvedRefs`` condition sums up both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qwenft_operator import conditions as cond
from qwenft_operator.actions import Requeue
from qwenft_operator.conditions import ConditionStatus
from qwenft_operator.draft import Draft
from qwenft_operator.observe import PodFacts
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.references import (
    Known,
    Reference,
    describe_all,
    missing,
    named_by_spec,
    secret_retry_after,
    template_references,
    unique,
)

# Seconds between looks while only ConfigMaps or claims are missing: their watch wakes the
# run when one appears; this is the fallback.
MISSING_REFERENCE_RETRY = 30.0


@dataclass(frozen=True)
class Waiting:
    """How a step reports that it waits for references: its condition, and the phase."""

    condition: str
    status: ConditionStatus
    phase: Phase


def _own(run: Run) -> set[str]:
    """Objects the run makes itself (mounted by its pods, created in the same step)."""
    return {run.names.config_map}


def child_references(run: Run, body: dict[str, Any]) -> list[Reference]:
    """What the child ``body`` (a Job or Deployment) mounts, as the spec names it."""
    return named_by_spec(run.spec, template_references(body), _own(run))


def gate(
    d: Draft,
    run: Run,
    known: Known,
    child: dict[str, Any],
    waiting: Waiting,
    *,
    also: Iterable[Reference] = (),
) -> bool:
    """True when every object ``child`` mounts (and ``also``) is there to create it now.

    Otherwise the step waits: its condition says ``MissingReference`` with what is missing
    and how to fix it, and the run is looked at again (soon when a Secret is missing).
    """
    refs = unique([*also, *child_references(run, child)])
    d.references.extend(refs)
    gone = missing(refs, known)
    if not gone:
        return True
    what = f"{child['kind']} {child['metadata']['name']}"
    d.missing += [f"{ref.describe()}, needed to create {what}" for ref in gone]
    fix = "create it" if len(gone) == 1 else "create them"
    message = (
        f"waiting for {describe_all(gone)} in namespace {run.namespace} before creating "
        f"{what}: {fix}, or change the spec field that names {'it' if len(gone) == 1 else 'them'}"
    )
    d.set(waiting.condition, waiting.status, cond.MISSING_REFERENCE, message)
    d.phase(waiting.phase)
    d.actions.append(Requeue(_retry_after(d, waiting.condition, gone)))
    return False


def _retry_after(d: Draft, condition: str, gone: Sequence[Reference]) -> float:
    if not any(ref.kind == "secret" for ref in gone):
        return MISSING_REFERENCE_RETRY
    before = cond.get_condition(d.old.conditions, condition)
    since = (
        before.last_transition_time if before and before.reason == cond.MISSING_REFERENCE else None
    )
    waited = (d.now - since).total_seconds() if since is not None else 0.0
    return secret_retry_after(waited)


@dataclass(frozen=True)
class Running:
    """A child that runs (or may start pods again): a Job not finished, the Deployment."""

    description: str  # "Job demo-train"
    component: str  # its pods' component label
    references: tuple[Reference, ...]  # what its pod template mounts


def check_running(
    d: Draft, run: Run, known: Known, running: Sequence[Running], pods: Sequence[PodFacts]
) -> None:
    """Report what the running children mount and is missing, and pods the kubelet can't
    start for a missing Secret or ConfigMap; set ``ResolvedRefs`` from everything the
    decision found missing (or back to True once nothing is)."""
    for child in running:
        refs = named_by_spec(run.spec, child.references, _own(run))
        d.references.extend(refs)
        gone = missing(refs, known)
        d.missing += [f"{ref.describe()}, used by {child.description}" for ref in gone]
    components = {child.component for child in running}
    for pod in pods:
        if pod.config_error and pod.phase == "Pending" and pod.component in components:
            d.missing.append(f"pod {pod.name} can't start: {pod.config_error}")
    before = cond.get_condition(d.status.conditions, cond.RESOLVED_REFS)
    if d.missing:
        message = (
            f"missing in namespace {run.namespace}: {'; '.join(d.missing)}. A pod that "
            "starts without them waits; create or restore them"
        )
        d.set(cond.RESOLVED_REFS, "False", cond.MISSING_REFERENCE, message)
    elif before is not None and before.status != "True":
        message = "every Secret, ConfigMap and claim the run's pods mount exists"
        d.set(cond.RESOLVED_REFS, "True", cond.REFERENCES_FOUND, message)
