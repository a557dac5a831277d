"""The ``QwenModelServer`` status: phase, conditions, endpoint and one entry per adapter.

Declared field by field so the CRD's status schema is generated (no preserved unknown
fields). ``adaptersDisplay`` ("serving/total") feeds the Adapters printer column.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from qwenft_operator.status import Condition, StatusObject

MAX_ADAPTER_RECORDS = 1024
AdapterState = Literal["Serving", "Pending", "Refused"]
AdapterSourceKind = Literal["fromFineTune", "selector", "inferenceServer", "pvc"]


class ServerPhase(StrEnum):
    """Where a server is (status.phase)."""

    PENDING = "Pending"  # no adapter can be served yet: nothing deployed
    DEPLOYING = "Deploying"  # the Deployment is rolling out its current adapter set
    READY = "Ready"  # every replica serves the current adapter set
    FAILED = "Failed"  # the Deployment can't become available


class AdapterStatus(StatusObject):
    """One adapter the server was asked to serve."""

    name: str = Field(max_length=128, description="Model name clients send for it.")
    source: AdapterSourceKind = Field(
        description="How it was asked for: fromFineTune, selector, inferenceServer (the run "
        "names this server) or pvc."
    )
    fine_tune: str | None = Field(
        default=None, max_length=63, description="The QwenFineTune that trained it."
    )
    path: str | None = Field(
        default=None, max_length=4096, description="Adapter directory in the server pods."
    )
    rank: int | None = Field(default=None, ge=1, description="Its LoRA rank.")
    state: AdapterState = Field(
        description="Serving (in every ready replica), Pending (not trained yet, or rolling "
        "out) or Refused (the reason says why; the others are served)."
    )
    reason: str = Field(max_length=128, description="CamelCase reason, e.g. BaseModelMismatch.")
    message: str = Field(default="", max_length=4096, description="Details for a human.")


class ServerEndpoint(StatusObject):
    """Where the adapters are served."""

    url: str | None = Field(default=None, description="In-cluster base URL of the OpenAI API.")
    models: list[str] = Field(
        default_factory=list, max_length=256, description="Model names served (one per adapter)."
    )


class QwenModelServerStatus(StatusObject):
    """Observed state of the server, written by the operator."""

    phase: ServerPhase | None = Field(default=None, description="One-word summary.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Detailed state, one entry per type (Ready, AdaptersResolved).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    endpoint: ServerEndpoint | None = Field(default=None, description="Where it serves.")
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        max_length=MAX_ADAPTER_RECORDS,
        description="Every adapter asked for, by name (the first 1024).",
    )
    adapters_serving: int | None = Field(default=None, ge=0, description="Adapters Serving.")
    adapters_total: int | None = Field(default=None, ge=0, description="Adapters asked for.")
    adapters_display: str | None = Field(
        default=None, max_length=32, description="'serving/total', for kubectl get."
    )
    deployment: str | None = Field(default=None, max_length=253, description="Its Deployment.")
