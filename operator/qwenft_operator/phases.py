"""The phases of a ``QwenFineTune``: the one-word summary in ``kubectl get qft``.

Conditions (:mod:`conditions`) carry the detail; a phase is derived from them and from
the children the run owns.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a run is in its life (status.phase)."""

    PENDING = "Pending"  # accepted, nothing created yet
    VALIDATING = "Validating"  # references and the dataset are being checked (CPU Job)
    TRAINING = "Training"  # the training Job exists (queued, pending or running)
    MERGING = "Merging"  # the merge Job runs
    DEPLOYING = "Deploying"  # the server Deployment is rolling out
    READY = "Ready"  # the endpoint serves the fine-tuned model
    SUCCEEDED = "Succeeded"  # finished; nothing is served (inference disabled)
    FAILED = "Failed"  # stopped for good; the Failed condition says why
    SUSPENDED = "Suspended"  # spec.suspend is true; training pods are stopped


# Phases a run never leaves (until its spec changes).
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
