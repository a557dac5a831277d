"""Every object the operator creates for a run, in creation order, without a cluster.

:func:`render_children` plays the reconcile decision (:func:`qwenft_operator.reconcile.decide`)
along a run's happy path: it starts with no children, and after each decision it takes every
child that decision created to exist and to have succeeded (a Job complete, the server
Deployment available) and decides again, until a decision creates nothing more. The bodies
are the decision's own ``CreateChild`` bodies, so what ``qwenft render`` prints is what the
operator sends, from the same builders and the same composition (a headless Service only for
a multi-node run, a merge Job only when the run merges, no server when inference is off).
Objects the spec names but the operator never creates (the output claim, Secrets) are
looked up by the operator, not made, and so are not rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from qwenft_operator import reconcile
from qwenft_operator.actions import CreateChild
from qwenft_operator.conditions import FAILED, get_condition
from qwenft_operator.observe import DeploymentFacts, JobFacts
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.status import QwenFineTuneStatus

# More decisions than a run has steps (validate, train, merge, serve, ready): a decision
# that keeps creating children past this is a bug, not a longer run.
MAX_DECISIONS = 10
# The decisions' clock: a fixed moment, each decision a minute after the one before.
START = datetime(2026, 1, 1, tzinfo=UTC)


class RenderError(ValueError):
    """The operator would fail the run before creating all of its children."""


@dataclass(frozen=True)
class RenderedChild:
    """One object the operator creates, and the phase the run enters as it does."""

    phase: Phase
    kind: str
    name: str
    body: dict[str, Any]


def _succeeded(observed: reconcile.Observed, run: Run, child: CreateChild) -> reconcile.Observed:
    """``observed`` with ``child`` existing and done (Jobs complete, Deployment available)."""
    names = run.names
    if child.kind == "Job":
        completions = int(child.body.get("spec", {}).get("completions") or 1)
        job = JobFacts(
            name=child.name,
            state="Succeeded",
            succeeded=completions,
            completions=completions,
        )
        if child.name == names.validate_job:
            return replace(observed, validate_job=job)
        if child.name == names.train_job:
            return replace(observed, train_job=job)
        if child.name == names.merge_job:
            return replace(observed, merge_job=job)
        raise RenderError(f"the decision created a Job render doesn't know: {child.name}")
    if child.kind == "Deployment":
        replicas = int(child.body.get("spec", {}).get("replicas") or 1)
        deployment = DeploymentFacts(
            name=child.name, replicas=replicas, ready_replicas=replicas, available=True
        )
        return replace(observed, deployment=deployment)
    return observed  # ConfigMaps and Services have no state the decision reads


def render_children(run: Run) -> list[RenderedChild]:
    """The children of ``run`` in the order the operator creates them.

    Raises :class:`RenderError` with the operator's failure message when the decision
    fails the run instead (a spec only ``qwenft run --local`` accepts, say).
    """
    status = QwenFineTuneStatus()
    observed = reconcile.Observed()
    rendered: list[RenderedChild] = []
    for step in range(MAX_DECISIONS):
        decision = reconcile.decide(run, status, observed, START + timedelta(minutes=step))
        status = decision.status
        if status.phase == Phase.FAILED:
            failed = get_condition(status.conditions, FAILED)
            detail = f"{failed.reason}: {failed.message}" if failed else "no reason given"
            raise RenderError(f"the operator would fail run '{run.name}': {detail}")
        created = [a for a in decision.actions if isinstance(a, CreateChild)]
        if not created:
            return rendered
        phase = status.phase or Phase.PENDING
        for child in created:
            rendered.append(RenderedChild(phase, child.kind, child.name, child.body))
            observed = _succeeded(observed, run, child)
    raise RenderError(f"run '{run.name}' still created children after {MAX_DECISIONS} decisions")
