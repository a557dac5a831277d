"""What the reconcile decision asks the operator to do, as typed values.

:func:`qwenft_operator.reconcile.decide` returns a :class:`Decision`: the new status and a
tuple of actions. Nothing here touches the API; :mod:`qwenft_operator.runner` carries the
actions out in order through :mod:`qwenft_operator.kube`. Keeping them as plain values is
what lets the decision be tested as a table (observed state in, actions out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from qwenft_operator.references import Reference
from qwenft_operator.status import QwenFineTuneStatus
from qwenft_operator.workloads import EvaluationPrompt

ChildKind = Literal["Job", "ConfigMap", "Service", "Deployment"]
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class CreateChild:
    """Create ``body`` unless an object of that kind and name exists already."""

    kind: ChildKind
    name: str
    body: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class ReplaceChild:
    """Replace an existing child's spec and annotations with ``body``'s (a Deployment whose
    pod template changed rolls onto it). ``body`` is built from the spec alone, so doing it
    twice changes nothing the second time."""

    kind: ChildKind
    name: str
    body: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class DeleteChild:
    """Delete a child (foreground, so its pods go first)."""

    kind: ChildKind
    name: str


@dataclass(frozen=True)
class SetJobSuspended:
    """Set a Job's ``spec.suspend`` (its pods stop, or start again)."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class PatchStatus:
    """Merge-patch these top-level status keys (None removes a key)."""

    patch: dict[str, Any]


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the run (``kubectl describe qft``)."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Requeue:
    """Look at the run again after this many seconds, even if nothing changes."""

    seconds: float


@dataclass(frozen=True)
class RunSmokeTest:
    """Send the evaluation prompts to the endpoint; the outcome wakes the run again."""

    url: str
    model: str
    prompts: tuple[EvaluationPrompt, ...]
    generation: int


Action = (
    CreateChild
    | ReplaceChild
    | DeleteChild
    | SetJobSuspended
    | PatchStatus
    | EmitEvent
    | Requeue
    | RunSmokeTest
)


@dataclass(frozen=True)
class Decision:
    """The status the run should have and the actions that get it there.

    ``references`` are the objects the decision checked (those of the children it creates
    and of those that run), for the runner to look up those it did not know about.
    """

    status: QwenFineTuneStatus
    actions: tuple[Action, ...] = ()
    references: tuple[Reference, ...] = ()

    def of_type(self, kind: type[Action]) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def requeue_after(self) -> float | None:
        delays = [a.seconds for a in self.actions if isinstance(a, Requeue)]
        return min(delays) if delays else None


def status_patch(old: QwenFineTuneStatus, new: QwenFineTuneStatus) -> dict[str, Any]:
    """The top-level status keys that differ between ``old`` and ``new`` (JSON form)."""
    before = dump_status(old)
    after = dump_status(new)
    patch: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            patch[key] = after.get(key)
    return patch


def dump_status(status: QwenFineTuneStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase keys, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
