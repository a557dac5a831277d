"""The ``QwenFineTune`` status: what the operator reports, declared field by field.

The CRD's status schema is generated from these models, so the API server keeps exactly
these fields (no ``x-kubernetes-preserve-unknown-fields`` over status). The operator
writes status by patch; readers parse it with :class:`QwenFineTuneStatus`, which ignores
keys it does not know so an older operator can read a newer status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from qwenft_operator.phases import Phase
from qwenft_operator.rules import SpecObject

_CAMEL_CASE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# status.checkpoints holds at most this many (the newest).
MAX_CHECKPOINT_RECORDS = 1000


class StatusObject(SpecObject):
    """Base of status objects: unknown keys are ignored, not errors."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusObject):
    """One aspect of the run's state (Kubernetes metav1.Condition)."""

    type: str = Field(
        min_length=1, max_length=316, description="Condition type, e.g. Ready or Failed."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=_CAMEL_CASE,
        description="CamelCase reason for the last transition, e.g. InvalidDataset.",
    )
    message: str = Field(default="", max_length=32768, description="Details for a human.")
    last_transition_time: datetime = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class Progress(StatusObject):
    """Training progress read from the rank-0 trainer."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Fractional epoch.")
    loss: float | None = Field(default=None, description="Training loss at the last log step.")
    eval_loss: float | None = Field(default=None, description="Loss on the held-out set.")
    learning_rate: float | None = Field(default=None, ge=0, description="Current learning rate.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Trained tokens per second, all ranks."
    )
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated time left.")
    display: str | None = Field(
        default=None,
        max_length=64,
        description="'step/totalSteps', for the Progress column of kubectl get.",
    )

    @model_validator(mode="after")
    def _fill_display(self) -> Progress:
        if self.display is None and self.step is not None:
            total = "?" if self.total_steps is None else str(self.total_steps)
            self.display = f"{self.step}/{total}"
        return self


class CheckpointRecord(StatusObject):
    """A complete checkpoint on the output volume."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    path: str = Field(max_length=4096, description="Directory in the output volume.")
    time: datetime | None = Field(default=None, description="When it was seen complete.")


class Outputs(StatusObject):
    """Results in the output volume (paths as the run's pods see them)."""

    adapter: str | None = Field(default=None, description="Adapter (or full weights) dir.")
    merged: str | None = Field(default=None, description="Merged model directory.")


class Endpoint(StatusObject):
    """Where the fine-tuned model is served."""

    url: str | None = Field(default=None, description="In-cluster base URL of the OpenAI API.")
    model_name: str | None = Field(default=None, description="Model name to send in requests.")


class Children(StatusObject):
    """Names of the objects the run owns (each labelled and owned by the run)."""

    validate_job: str | None = Field(default=None, description="Dataset validation Job.")
    config_map: str | None = Field(default=None, description="Rendered trainer config.")
    train_service: str | None = Field(
        default=None, description="Headless torchrun Service (multi-node runs)."
    )
    train_job: str | None = Field(default=None, description="Indexed training Job.")
    merge_job: str | None = Field(default=None, description="Merge Job.")
    serve_deployment: str | None = Field(default=None, description="Server Deployment.")
    serve_service: str | None = Field(default=None, description="Server Service.")


class Restart(StatusObject):
    """One restart of every rank of a multi-node run together (a gang restart)."""

    time: datetime = Field(description="When the operator decided the restart.")
    cause: Literal["Failure", "Disruption"] = Field(
        description="Failure: a rank failed (counts against runPolicy.backoffLimit); "
        "Disruption: a rank was preempted, evicted, lost with its node or stopped with a "
        "checkpoint (does not count)."
    )
    rank: int | None = Field(default=None, ge=0, description="Node rank of the pod that ended.")
    pod: str | None = Field(default=None, max_length=253, description="That pod's name.")
    message: str = Field(default="", max_length=32768, description="How that pod ended.")
    job_uid: str = Field(
        default="", max_length=64, description="UID of the training Job that was replaced."
    )


class SmokeTest(StatusObject):
    """Result of the evaluationPrompts sent to the endpoint."""

    passed: bool = Field(description="Every prompt got an answer with the expected text.")
    total: int = Field(ge=0, description="Prompts sent.")
    failed: int = Field(default=0, ge=0, description="Prompts that failed.")
    message: str | None = Field(default=None, max_length=32768, description="What failed.")
    time: datetime | None = Field(default=None, description="When the test ran.")


@dataclass(frozen=True)
class SmokeOutcome:
    """A finished smoke test of one generation of the run, as the operator holds it in memory
    until the reconcile records its result (not part of the resource's schema)."""

    generation: int
    result: SmokeTest
    reachable: bool  # False: the endpoint never answered; result.message says why


class QwenFineTuneStatus(StatusObject):
    """Observed state of the run, written by the operator."""

    phase: Phase | None = Field(default=None, description="One-word summary of the run.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Detailed state, one entry per type (Validated, Training, Trained, "
        "Merged, Ready, SmokeTested, Suspended, Failed).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    checkpoints: list[CheckpointRecord] = Field(
        default_factory=list,
        max_length=MAX_CHECKPOINT_RECORDS,
        description="Complete checkpoints, oldest first.",
    )
    start_time: datetime | None = Field(default=None, description="When training started.")
    completion_time: datetime | None = Field(
        default=None, description="When the run reached Ready, Succeeded or Failed."
    )
    resumed_from_step: int | None = Field(
        default=None, ge=0, description="Step the last training start resumed from."
    )
    restarts: int | None = Field(
        default=None,
        ge=0,
        description="Times every rank of a multi-node run restarted together from the newest "
        "complete checkpoint, for any cause.",
    )
    disruption_restarts: int | None = Field(
        default=None,
        ge=0,
        description="Of those, the restarts after a disruption (preemption, eviction, node "
        "loss, a rank stopped with a checkpoint); they don't count against "
        "runPolicy.backoffLimit.",
    )
    last_restart: Restart | None = Field(default=None, description="The newest restart.")
    outputs: Outputs | None = Field(default=None, description="Result locations.")
    endpoint: Endpoint | None = Field(default=None, description="Where the model is served.")
    children: Children | None = Field(default=None, description="Objects the run owns.")
    smoke_test: SmokeTest | None = Field(default=None, description="Smoke test result.")
