"""Condition types and reasons of a ``QwenFineTune``, and the pure condition update.

A run's phase (:mod:`phases`) is the one-word summary; conditions carry the detail
(Kubernetes API conventions: a list keyed by ``type``, each with status, a CamelCase
reason a user or a script can act on, a message, ``lastTransitionTime`` and
``observedGeneration``). Reasons are constants so the operator, the tests and the docs
spell them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from qwenft_operator.status import Condition

ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types.
VALIDATED = "Validated"  # spec references and dataset checked
TRAINING = "Training"  # True while the training Job runs; False once it ended
TRAINED = "Trained"  # the training Job completed and the results are on the output volume
MERGED = "Merged"  # the merged model is on the output volume
READY = "Ready"  # the endpoint is available
SMOKE_TESTED = "SmokeTested"  # the evaluationPrompts passed against the endpoint
SUSPENDED = "Suspended"  # training is suspended by spec.suspend
FAILED = "Failed"  # the run stopped for good; the reason says why
RESOLVED_REFS = "ResolvedRefs"  # the Secrets, ConfigMaps and claims its pods mount exist
FITS_GPU = "FitsGPU"  # the run's memory estimate fits the GPUs it targets; message has it
CONDITION_TYPES = (
    VALIDATED, TRAINING, TRAINED, MERGED, READY, SMOKE_TESTED, SUSPENDED, FAILED, RESOLVED_REFS,
    FITS_GPU,
)  # fmt: skip

# Reasons: validation.
VALIDATION_RUNNING = "ValidationRunning"  # the dataset validation Job is running
SPEC_VALID = "SpecValid"  # references exist and the dataset passed validation
INVALID_SPEC = "InvalidSpec"  # the spec can never work (e.g. no output claim in a cluster)
INVALID_DATASET = "InvalidDataset"  # the validator rejected the data; message has its report
MISSING_REFERENCE = "MissingReference"  # a referenced Secret, ConfigMap or claim is missing
REFERENCES_FOUND = "ReferencesFound"  # every missing reference exists again

# Reasons: the GPU-fit estimate (FitsGPU), checked once validation passed.
GPU_MEMORY_FITS = "GpuMemoryFits"  # the estimate is below 90% of one GPU's memory
GPU_MEMORY_TIGHT = "GpuMemoryTight"  # it fits within 10% of the limit; a Warning Event says so
GPU_MEMORY_EXCEEDED = "GpuMemoryExceeded"  # it can't fit; the run fails before training
GPU_MEMORY_UNKNOWN = "GpuMemoryUnknown"  # the GPU memory or the model's shape is not known

# Reasons: the pods of a step (validation, training, merge) no node fits. The message has
# the scheduler's verdict from the pods' PodScheduled condition.
PODS_UNSCHEDULABLE = "PodsUnschedulable"  # the step waits for a node; the run goes on waiting
UNSCHEDULABLE = "Unschedulable"  # waited runPolicy.schedulingTimeoutSeconds; Job deleted

# Reasons: training.
QUEUED = "Queued"  # the Job waits for Kueue admission (it is suspended by Kueue)
PODS_PENDING = "PodsPending"  # the Job exists; its pods are not all running yet
TRAINING_RUNNING = "TrainingRunning"  # every training pod runs
TRAINING_SUCCEEDED = "TrainingSucceeded"  # the training Job completed
TRAINING_FAILED = "TrainingFailed"  # a pod failed for good; message has exit code and message
DEADLINE_EXCEEDED = "DeadlineExceeded"  # runPolicy (or validation) activeDeadlineSeconds passed
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # more pod failures than runPolicy.backoffLimit
# The message of Restarting has the cause: rank, exit code or disruption.
RESTARTING = "Restarting"  # a rank of a multi-node run ended: every rank restarts together
SUSPENDED_BY_USER = "SuspendedByUser"  # spec.suspend is true
RESUMED = "Resumed"  # spec.suspend went back to false; training continues from a checkpoint

# Reasons: merge.
MERGE_RUNNING = "MergeRunning"  # the merge Job is running
MERGE_SUCCEEDED = "MergeSucceeded"  # the merged model was written and verified
MERGE_SKIPPED = "MergeSkipped"  # merge disabled, or nothing to merge (method full)
MERGE_FAILED = "MergeFailed"  # the merge Job failed; message has its error
CHECKPOINT_NOT_FOUND = "CheckpointNotFound"  # inference.checkpoint not kept; message lists those
# spec.inference.checkpoint changed after a merge or a rollout: the merge is redone (Merged)
# and the server rolls onto it (Ready); the old choice is served until then.
CHECKPOINT_CHANGED = "CheckpointChanged"

# Reasons: serving.
DEPLOYING = "Deploying"  # the Deployment is rolling out
# The run's spec builds another server Deployment than the one running (e.g. a changed
# inference.replicas or engine): it is replaced and rolls onto the new spec.
SERVER_UPDATED = "ServerUpdated"
ENDPOINT_READY = "EndpointReady"  # the Deployment is available behind its Service
INFERENCE_DISABLED = "InferenceDisabled"  # spec.inference.enabled is false
SERVED_BY_MODEL_SERVER = "ServedByModelServer"  # spec.inference.server: a shared server serves it
DEPLOY_FAILED = "DeployFailed"  # the Deployment can't become available (e.g. image, crash loop)
SMOKE_TEST_PASSED = "SmokeTestPassed"  # every evaluation prompt got an acceptable answer
SMOKE_TEST_FAILED = "SmokeTestFailed"  # an evaluation prompt failed; message says which
SMOKE_TEST_RUNNING = "SmokeTestRunning"  # the evaluation prompts are being sent
ENDPOINT_UNREACHABLE = "EndpointUnreachable"  # the endpoint did not answer the smoke test

REASONS = (
    VALIDATION_RUNNING,
    SPEC_VALID,
    INVALID_SPEC,
    INVALID_DATASET,
    MISSING_REFERENCE,
    REFERENCES_FOUND,
    GPU_MEMORY_FITS,
    GPU_MEMORY_TIGHT,
    GPU_MEMORY_EXCEEDED,
    GPU_MEMORY_UNKNOWN,
    PODS_UNSCHEDULABLE,
    UNSCHEDULABLE,
    QUEUED,
    PODS_PENDING,
    TRAINING_RUNNING,
    TRAINING_SUCCEEDED,
    TRAINING_FAILED,
    DEADLINE_EXCEEDED,
    BACKOFF_LIMIT_EXCEEDED,
    RESTARTING,
    SUSPENDED_BY_USER,
    RESUMED,
    MERGE_RUNNING,
    MERGE_SUCCEEDED,
    MERGE_SKIPPED,
    MERGE_FAILED,
    CHECKPOINT_NOT_FOUND,
    CHECKPOINT_CHANGED,
    DEPLOYING,
    SERVER_UPDATED,
    ENDPOINT_READY,
    INFERENCE_DISABLED,
    SERVED_BY_MODEL_SERVER,
    DEPLOY_FAILED,
    SMOKE_TEST_PASSED,
    SMOKE_TEST_FAILED,
    SMOKE_TEST_RUNNING,
    ENDPOINT_UNREACHABLE,
)


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of ``type`` set; the input is left unchanged.

    ``lastTransitionTime`` moves to ``now`` only when the status changes (or the condition
    is new); other conditions keep their order, and a new one is appended.
    """
    previous = get_condition(conditions, type)
    changed = previous is None or previous.status != status
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type else c for c in conditions]


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    """The condition of ``type``, or None."""
    return next((c for c in conditions if c.type == type), None)


def is_true(conditions: Sequence[Condition], type: str) -> bool:
    """Whether the condition of ``type`` exists with status True."""
    found = get_condition(conditions, type)
    return found is not None and found.status == "True"
