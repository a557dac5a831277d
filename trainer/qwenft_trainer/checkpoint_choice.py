"""Which trained weights to serve or merge: the final ones, a kept checkpoint, or the best.

``spec.inference.checkpoint`` names a step (``800``) or ``best`` (the kept checkpoint with
the lowest eval loss). The operator can't see the output volume, so the choice is resolved
where the files are: at the start of the merge Job and of the server. A step that was never
saved or was pruned is refused with the list of checkpoints that do exist; the Trainer's
``log_history`` (in every checkpoint's ``trainer_state.json``) says which step evaluated
best. Only complete checkpoints (:mod:`qwenft_trainer.checkpoints`) count.

    path = resolve_checkpoint("/output/demo", "best")   # /output/demo/checkpoint-900
    python -m qwenft_trainer.merge --adapter /output/demo --checkpoint best --output ...
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from qwenft_trainer.checkpoints import (
    TRAINER_STATE,
    Checkpoint,
    best_step,
    list_checkpoints,
)

BEST: Literal["best"] = "best"
CheckpointChoice = int | Literal["best"]


class CheckpointNotFound(LookupError):
    """The chosen checkpoint isn't on the output volume; the message lists those that are."""


def parse_choice(text: str) -> CheckpointChoice:
    """``best`` or a positive step number, as given on a command line."""
    if text == BEST:
        return BEST
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"checkpoint must be a positive step number or '{BEST}', got '{text}'")


def read_log_history(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The ``log_history`` of a checkpoint's ``trainer_state.json`` ([] if unreadable)."""
    try:
        state = json.loads((checkpoint.path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = state.get("log_history") if isinstance(state, dict) else None
    return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []


def best_checkpoint(checkpoints: Sequence[Checkpoint]) -> Checkpoint | None:
    """The complete checkpoint with the lowest eval loss, read from the newest one's log
    history (which holds every evaluation of the run)."""
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return None
    step = best_step((c.step for c in complete), read_log_history(complete[-1]))
    return next((c for c in complete if c.step == step), None)


def describe_kept(checkpoints: Sequence[Checkpoint]) -> str:
    """``kept checkpoints: 800, 900, 1000 (best by eval loss: 900)``, or that there are none."""
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return "no complete checkpoint is kept"
    text = "kept checkpoints: " + ", ".join(str(c.step) for c in complete)
    best = best_checkpoint(complete)
    return text + (f" (best by eval loss: {best.step})" if best else " (none evaluated)")


def resolve_checkpoint(output_dir: str | Path, choice: CheckpointChoice | None) -> Path:
    """The directory holding the chosen weights: ``output_dir`` itself (the final adapter or
    weights) for None, else the complete ``checkpoint-N`` the choice names.

    Raises :class:`CheckpointNotFound` naming the kept checkpoints when there is no such
    checkpoint, or, for ``best``, when no kept checkpoint was evaluated.
    """
    root = Path(output_dir)
    if choice is None:
        return root
    checkpoints = list_checkpoints(root)
    complete = [c for c in checkpoints if c.complete]
    if choice == BEST:
        best = best_checkpoint(complete)
        if best is None:
            raise CheckpointNotFound(
                f"no kept checkpoint in {root} has an eval loss to pick the best by "
                f"({describe_kept(checkpoints)}): evaluation must run at steps that are "
                "saved (evaluation.steps a divisor of checkpoint.saveSteps), or name a step"
            )
        return best.path
    found = next((c for c in complete if c.step == choice), None)
    if found is None:
        raise CheckpointNotFound(
            f"checkpoint {choice} doesn't exist in {root}; {describe_kept(checkpoints)}"
        )
    return found.path
