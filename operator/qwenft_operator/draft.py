"""The decision being built: a draft of the run's next status and the actions collected.

:mod:`qwenft_operator.reconcile` walks the phases and writes into a :class:`Draft`
(conditions, phase, child names, child creations); :meth:`Draft.finish` adds what follows
from the difference between the old and the new status: an Event for a phase change or
failure (and a Warning for a newly missing reference or a new verdict of the scheduler on
a step's pods, a Normal Event when missing references exist again) and the status patch
with only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from qwenft_operator import conditions as cond
from qwenft_operator.actions import (
    Action,
    ChildKind,
    CreateChild,
    Decision,
    EmitEvent,
    PatchStatus,
    status_patch,
)
from qwenft_operator.phases import Phase
from qwenft_operator.references import Reference, unique
from qwenft_operator.status import Children, QwenFineTuneStatus

# Conditions that can say the run waits on something the user must fix, and the reasons
# that say so; each new such reason or message is also a Warning Event (ResolvedRefs's
# only when no step condition says the same).
WAITING_CONDITION_TYPES = (cond.VALIDATED, cond.TRAINING, cond.MERGED, cond.READY)
WAITING_REASONS = (cond.MISSING_REFERENCE, cond.PODS_UNSCHEDULABLE)


@dataclass
class Draft:
    """The status being built and the actions collected so far; :meth:`finish` turns
    them into a :class:`Decision`."""

    generation: int
    old: QwenFineTuneStatus
    now: datetime
    status: QwenFineTuneStatus = field(init=False)
    actions: list[Action] = field(default_factory=list)
    # The references checked (Decision.references), and the missing ones, described.
    references: list[Reference] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = self.old.model_copy(deep=True)
        self.status.observed_generation = self.generation
        if self.status.children is None:
            self.status.children = Children()

    def set(self, type: str, status: cond.ConditionStatus, reason: str, message: str) -> None:
        self.status.conditions = cond.set_condition(
            self.status.conditions,
            type=type,
            status=status,
            reason=reason,
            message=message,
            generation=self.generation,
            now=self.now,
        )

    def phase(self, phase: Phase) -> None:
        self.status.phase = phase

    def create(self, kind: ChildKind, body: dict[str, object], slot: str) -> None:
        name = str(body["metadata"]["name"])  # type: ignore[index]
        self.actions.append(CreateChild(kind=kind, name=name, body=dict(body)))
        self.child(slot, name)

    def child(self, slot: str, name: str) -> None:
        assert self.status.children is not None
        setattr(self.status.children, slot, name)

    def fail(self, type: str, reason: str, message: str) -> None:
        self.set(type, "False", reason, message)
        self.set(cond.FAILED, "True", reason, message)
        self.phase(Phase.FAILED)
        self.status.completion_time = self.status.completion_time or self.now

    def finish(self) -> Decision:
        old_phase, new_phase = self.old.phase, self.status.phase
        events: list[Action] = []
        failed = cond.get_condition(self.status.conditions, cond.FAILED)
        if new_phase != old_phase and new_phase == Phase.FAILED and failed is not None:
            events.append(EmitEvent("Warning", failed.reason, failed.message))
        elif new_phase != old_phase and new_phase is not None:
            events.append(
                EmitEvent("Normal", str(new_phase), f"{old_phase or 'New'} -> {new_phase}")
            )
        if new_phase != Phase.FAILED:
            events.extend(self._waiting_warnings())
        patch = status_patch(self.old, self.status)
        actions = list(self.actions)
        if patch:
            actions.append(PatchStatus(patch))
        return Decision(
            status=self.status,
            actions=(*actions, *events),
            references=tuple(unique(self.references)),
        )

    def _waiting_warnings(self) -> list[EmitEvent]:
        """A Warning for each step condition that now says why the run waits, or says it
        differently (a reference missing, pods no node fits)."""
        events: list[EmitEvent] = []
        for type_ in WAITING_CONDITION_TYPES:
            before = cond.get_condition(self.old.conditions, type_)
            after = cond.get_condition(self.status.conditions, type_)
            if (
                after is not None
                and after.reason in WAITING_REASONS
                and (
                    before is None
                    or (before.reason, before.message) != (after.reason, after.message)
                )
            ):
                events.append(EmitEvent("Warning", after.reason, after.message))
        before = cond.get_condition(self.old.conditions, cond.RESOLVED_REFS)
        after = cond.get_condition(self.status.conditions, cond.RESOLVED_REFS)
        if after is not None and (before is None or before.message != after.message):
            said = any(e.reason == cond.MISSING_REFERENCE for e in events)
            if after.status == "False" and not said:
                events.append(EmitEvent("Warning", after.reason, after.message))
            elif after.status == "True" and before is not None and before.status == "False":
                events.append(EmitEvent("Normal", after.reason, after.message))
        return events
