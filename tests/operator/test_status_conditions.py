"""Status model and conditions: the pure condition update, phases, reasons, progress.

Covers: set_condition adds, replaces by type, keeps lastTransitionTime while the status
stays, moves it when the status changes, never mutates its input and keeps order;
get_condition / is_true; reasons are unique CamelCase constants;
Progress fills its display column; the status parses what the API returns, ignoring
keys it does not know, and dumps camelCase; docs/qwenfinetune.md explains every
condition type, reason and phase.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from qwenft_operator import conditions
from qwenft_operator.phases import Phase
from qwenft_operator.status import Condition, Progress, QwenFineTuneStatus

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def _set(existing: list[Condition], status: str, reason: str, now: datetime) -> list[Condition]:
    return conditions.set_condition(
        existing,
        type=conditions.TRAINING,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=f"{reason} message",
        generation=2,
        now=now,
    )


def test_set_condition_adds_a_new_condition() -> None:
    result = _set([], "True", conditions.TRAINING_RUNNING, T0)
    assert result == [
        Condition(
            type="Training",
            status="True",
            reason="TrainingRunning",
            message="TrainingRunning message",
            last_transition_time=T0,
            observed_generation=2,
        )
    ]


def test_same_status_keeps_the_transition_time_but_updates_the_rest() -> None:
    first = _set([], "Unknown", conditions.QUEUED, T0)
    second = _set(first, "Unknown", conditions.PODS_PENDING, T1)
    assert second[0].last_transition_time == T0
    assert second[0].reason == "PodsPending"
    assert first[0].reason == "Queued", "the input list must not change"


def test_status_change_moves_the_transition_time() -> None:
    first = _set([], "True", conditions.TRAINING_RUNNING, T0)
    second = _set(first, "False", conditions.TRAINING_SUCCEEDED, T1)
    assert second[0].last_transition_time == T1
    assert second[0].status == "False"


def test_other_conditions_keep_their_place() -> None:
    ready = conditions.set_condition(
        [], type=conditions.VALIDATED, status="True", reason=conditions.SPEC_VALID,
        message="", generation=1, now=T0,
    )  # fmt: skip
    both = _set(ready, "True", conditions.TRAINING_RUNNING, T0)
    updated = _set(both, "False", conditions.TRAINING_FAILED, T1)
    assert [c.type for c in updated] == ["Validated", "Training"]
    assert updated[0] is both[0]
    assert conditions.get_condition(updated, "Training") == updated[1]
    assert conditions.get_condition(updated, "Ready") is None
    assert conditions.is_true(updated, "Validated")
    assert not conditions.is_true(updated, "Training")


def test_reasons_are_unique_camel_case_constants() -> None:
    assert len(set(conditions.REASONS)) == len(conditions.REASONS)
    for reason in (*conditions.REASONS, *conditions.CONDITION_TYPES):
        assert re.fullmatch(r"[A-Z][A-Za-z]+", reason), reason
    required = {
        "InvalidSpec", "InvalidDataset", "MissingReference", "TrainingFailed",
        "DeadlineExceeded", "BackoffLimitExceeded", "MergeFailed", "DeployFailed",
    }  # fmt: skip
    assert required <= set(conditions.REASONS)
    assert {"Validated", "Training", "Merged", "Ready", "Failed", "Suspended"} <= set(
        conditions.CONDITION_TYPES
    )


def test_phases() -> None:
    assert [p.value for p in Phase] == [
        "Pending", "Validating", "Training", "Merging", "Deploying", "Ready",
        "Succeeded", "Failed", "Suspended",
    ]  # fmt: skip


def test_progress_display() -> None:
    assert Progress(step=120, total_steps=500).display == "120/500"
    assert Progress(step=3).display == "3/?"
    assert Progress().display is None


def test_status_round_trip_from_the_api() -> None:
    raw = {
        "phase": "Training",
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Training",
                "status": "True",
                "reason": "TrainingRunning",
                "message": "2/2 pods running",
                "lastTransitionTime": "2026-11-29T12:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "progress": {"step": 10, "totalSteps": 100, "loss": 1.25},
        "kopf": {"progress": {}},  # written by other tools: ignored
    }
    status = QwenFineTuneStatus.model_validate(raw)
    assert status.phase is Phase.TRAINING
    assert status.conditions[0].last_transition_time == T0
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["progress"] == {"step": 10, "totalSteps": 100, "loss": 1.25, "display": "10/100"}
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-11-29T12:00:00Z"
    assert "kopf" not in dumped


def test_docs_list_every_condition_type_reason_and_phase() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "qwenfinetune.md").read_text(encoding="utf-8")
    for name in (*conditions.CONDITION_TYPES, *conditions.REASONS):
        assert f"| `{name}` |" in doc, f"docs/qwenfinetune.md does not explain {name}"
    for phase in Phase:
        assert phase.value in doc
