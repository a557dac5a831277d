"""A run whose ``spec.inference.checkpoint`` changed after it merged or started serving.

The merge Job and the server's pod template record the checkpoint choice they were made for
(:data:`~qwenft_operator.labels.CHECKPOINT_ANNOTATION`: ``best``, a step, or ``final``; one
without it, made by an operator that did not record it, counts as ``final``). When the spec
names another choice, the merge is redone and the server rolls onto it, in that order:

1. the old merge Job is deleted (:func:`redo_merge`); the server keeps serving the old
   merged model meanwhile, and Merged and Ready say so (reason ``CheckpointChanged``);
2. once it is gone, the reconcile decision creates the merge Job for the new choice, and
   waits for it as for any merge;
3. once that merge succeeded, the Deployment is replaced as for any change of the spec it
   is built from (:mod:`~qwenft_operator.server_updates`): its pod template's annotation
   and, for the builtin server without a merge, its ``--checkpoint`` argument change, so
   the Deployment rolls and its readiness says when the new choice is served.

Each step posts one Normal Event with reason ``CheckpointChanged``.
"""

from __future__ import annotations

from qwenft_operator import conditions as cond
from qwenft_operator.actions import DeleteChild, EmitEvent
from qwenft_operator.draft import Draft
from qwenft_operator.observe import DeploymentFacts, JobFacts
from qwenft_operator.phases import Phase


def _said(d: Draft, type_: str, message: str) -> bool:
    """The old status already says ``message`` with reason CheckpointChanged on ``type_``."""
    before = cond.get_condition(d.old.conditions, type_)
    return before is not None and (before.reason, before.message) == (
        cond.CHECKPOINT_CHANGED,
        message,
    )


def redo_merge(d: Draft, job: JobFacts, deployment: DeploymentFacts | None, wanted: str) -> None:
    """Delete the merge Job ``job``, made for another choice than ``wanted``; the decision
    creates the new one once the watch shows the old one gone."""
    if not job.deleting:
        d.actions.append(DeleteChild("Job", job.name))
    message = (
        f"spec.inference.checkpoint is {wanted}, Job {job.name} merged {job.checkpoint}: "
        "the merge is redone"
    )
    if not _said(d, cond.MERGED, message):
        event = f"merge redone for checkpoint {wanted} (was {job.checkpoint})"
        d.actions.append(EmitEvent("Normal", cond.CHECKPOINT_CHANGED, event))
    d.set(cond.MERGED, "Unknown", cond.CHECKPOINT_CHANGED, message)
    if deployment is not None:
        serving_now = (
            f"Deployment {deployment.name} serves checkpoint {deployment.checkpoint} until the "
            f"merge of {wanted} finished"
        )
        d.set(cond.READY, "False", cond.CHECKPOINT_CHANGED, serving_now)
    d.phase(Phase.MERGING)
