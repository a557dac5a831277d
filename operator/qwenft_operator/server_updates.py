"""A serving run whose server Deployment was built from another spec than the run's now.

The server Deployment carries on its metadata the digest of the spec it was built with
(:data:`~qwenft_operator.labels.SPEC_DIGEST_ANNOTATION`: replicas, strategy, pod
template). When the run's spec builds another one (a changed ``spec.inference.replicas``,
``gpus``, ``resources``, ``engine``, ``checkpoint``, ``images.server``, env, served model
name, or an operator whose builder changed) the Deployment's spec is replaced with the new
one (:func:`update`, once its merge, if any, is done): it rolls one pod at a time and the
run is Deploying until every replica runs the new template and is ready. A Deployment
without the digest, made by an operator that did not record it, is replaced once. After a
replace the watch shows the new digest, and there is nothing more to do.

Each update posts one Normal Event: reason ``CheckpointChanged`` when the served checkpoint
is what changed (the pod template's :data:`~qwenft_operator.labels.CHECKPOINT_ANNOTATION`;
see :mod:`~qwenft_operator.checkpoint_changes`), ``ServerUpdated`` otherwise.
"""

from __future__ import annotations

from typing import Any

from qwenft_operator import conditions as cond
from qwenft_operator import reference_checks
from qwenft_operator.actions import EmitEvent, ReplaceChild
from qwenft_operator.builders import serving
from qwenft_operator.draft import Draft
from qwenft_operator.observe import DeploymentFacts
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.reference_checks import Waiting
from qwenft_operator.references import Known


def outdated(deployment: DeploymentFacts, body: dict[str, Any]) -> bool:
    """Whether ``deployment`` was built from another spec than ``body``, built now."""
    return deployment.digest != serving.deployment_digest(body)


def update(
    d: Draft, run: Run, known: Known, deployment: DeploymentFacts, body: dict[str, Any]
) -> None:
    """Replace the spec of ``deployment`` with ``body``'s (built from the run's spec now),
    once the objects it mounts exist; the Deployment rolls onto it."""
    waiting = Waiting(cond.READY, "False", Phase.DEPLOYING)
    if not reference_checks.gate(d, run, known, body, waiting):
        return
    d.actions.append(ReplaceChild("Deployment", deployment.name, body))
    wanted = serving.served_checkpoint(run)
    if deployment.checkpoint != wanted:
        reason = cond.CHECKPOINT_CHANGED
        message = (
            f"Deployment {deployment.name} rolls from checkpoint {deployment.checkpoint} "
            f"to {wanted}"
        )
        event = f"the server rolls onto checkpoint {wanted} (was {deployment.checkpoint})"
    else:
        reason = cond.SERVER_UPDATED
        message = f"Deployment {deployment.name} rolls onto the spec of generation {run.generation}"
        event = f"the server Deployment is updated to the spec of generation {run.generation}"
    before = cond.get_condition(d.old.conditions, cond.READY)
    if before is None or (before.reason, before.message) != (reason, message):
        d.actions.append(EmitEvent("Normal", reason, event))
    d.set(cond.READY, "False", reason, message)
    d.phase(Phase.DEPLOYING)
