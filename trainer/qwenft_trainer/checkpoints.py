"""Checkpoints that are safe to resume from, and how many of them stay on disk.

A pod can be killed while ``checkpoint-N/`` is half written (weights there, optimizer
state not yet). The Hugging Face Trainer resumes from the highest-numbered directory and
would load that broken one. So a checkpoint only counts once every rank has finished
writing it and rank 0 has put a marker file in it; resuming, listing and pruning look at
marked checkpoints only, and unmarked leftovers of a crash are removed at start.

    newest = newest_complete(output_dir)          # Checkpoint | None
    trainer.add_callback(CheckpointCallback(keep=3))
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

# The Trainer names its checkpoints ``checkpoint-<global step>``.
PREFIX = "checkpoint-"
MARKER = "qwenft-complete"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One ``checkpoint-N`` directory and whether it was completely written."""

    path: Path
    step: int
    complete: bool


def list_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """Every ``checkpoint-N`` directory under ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found: list[Checkpoint] = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir():
            found.append(Checkpoint(child, int(match[1]), (child / MARKER).is_file()))
    return sorted(found, key=lambda c: c.step)


def newest_complete(output_dir: str | Path) -> Checkpoint | None:
    """The complete checkpoint with the highest step, skipping half-written ones."""
    complete = [c for c in list_checkpoints(output_dir) if c.complete]
    return complete[-1] if complete else None


def mark_complete(path: str | Path, *, step: int) -> Path:
    """Write the marker atomically (temp file, fsync, rename) and return its path."""
    directory = Path(path)
    marker = directory / MARKER
    temp = directory / f".{MARKER}.tmp"
    payload = json.dumps({"step": step, "time": time.time()})
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(payload + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, marker)
    fsync_dir(directory)
    return marker


def fsync_dir(directory: Path) -> None:
    """Make a directory's new entries durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_prune_plan(
    checkpoints: Sequence[Checkpoint], keep: int, *, protect: int | None = None
) -> list[Checkpoint]:
    """Checkpoints to delete: complete ones beyond the newest ``keep``, and stale partials.

    A partial checkpoint older than the newest complete one is a crash leftover that
    nothing will ever finish; a partial one newer than it may be in the middle of being
    written and is left alone. The complete checkpoint at step ``protect`` (the best by
    eval loss, which ``spec.inference.checkpoint: best`` serves) is kept beyond ``keep``.
    """
    complete = [c for c in checkpoints if c.complete]
    kept = {c.step for c in complete[-keep:]} if keep > 0 else set()
    if protect is not None:
        kept.add(protect)
    newest = complete[-1].step if complete else None
    doomed = [c for c in complete if c.step not in kept]
    if newest is not None:
        doomed += [c for c in checkpoints if not c.complete and c.step < newest]
    return sorted(doomed, key=lambda c: c.step)


def prune(output_dir: str | Path, keep: int, *, protect: int | None = None) -> list[Path]:
    """Delete what :func:`build_prune_plan` names; returns the removed paths."""
    removed: list[Path] = []
    for checkpoint in build_prune_plan(list_checkpoints(output_dir), keep, protect=protect):
        shutil.rmtree(checkpoint.path, ignore_errors=True)
        removed.append(checkpoint.path)
    return removed


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete every unmarked checkpoint (call at start, before any rank writes).

    Training from the newest complete checkpoint will reach those steps again, and the
    Trainer would write into the old directory, mixing fresh and stale files.
    """
    removed: list[Path] = []
    for checkpoint in list_checkpoints(output_dir):
        if not checkpoint.complete:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
            removed.append(checkpoint.path)
    return removed


# Files of a checkpoint that only matter for continuing training, not for the result.
TRAINING_STATE_FILES = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "trainer_state.json",
    "latest",
    "zero_to_fp32.py",
    "adaptive_rank.pt",  # qwenft_trainer.adaptive_rank.STATE_FILE
    MARKER,
)
TRAINER_STATE = "trainer_state.json"


def is_final(checkpoint: Checkpoint, max_steps: int) -> bool:
    """True when the checkpoint already holds the last step the run plans.

    ``max_steps`` is the configured step count (-1: the epochs decide, as planned when
    the checkpoint was written). Resuming the Trainer from a final checkpoint would run
    one step past the end, so a restarted run exports it instead of training again.
    """
    try:
        state = json.loads((checkpoint.path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    planned = max_steps if max_steps > 0 else int(state.get("max_steps") or 0)
    return planned > 0 and int(state.get("global_step") or 0) >= planned


def export_final(checkpoint: Checkpoint, output_dir: str | Path) -> list[Path]:
    """Copy the model files (adapter or weights, tokenizer) of a checkpoint to ``output_dir``."""
    copied: list[Path] = []
    for item in checkpoint.path.iterdir():
        skip = item.name in TRAINING_STATE_FILES or item.name.startswith(
            ("rng_state", "global_step")
        )
        if skip or not item.is_file():
            continue
        target = Path(output_dir) / item.name
        shutil.copy2(item, target)
        copied.append(target)
    return copied


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once every rank wrote its part, then prunes old ones
    (keeping the best by eval loss too).

    ``on_save`` runs on every rank after the Trainer wrote model, optimizer, scheduler,
    RNG and trainer state (and after the evaluation of that step); the barrier makes sure
    the other ranks' shards are on disk before rank 0 writes the marker.
    """

    def __init__(self, *, keep: int) -> None:
        self.keep = keep
        self.saved: list[Path] = []

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        path = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        _barrier()
        if state.is_world_process_zero and path.is_dir():
            mark_complete(path, step=state.global_step)
            self.saved.append(path)
            steps = [c.step for c in list_checkpoints(args.output_dir) if c.complete]
            best = best_step(steps, state.log_history)
            for removed in prune(args.output_dir, self.keep, protect=best):
                log.info("removed old checkpoint %s (keeping %d)", removed, self.keep)
        _barrier()


def eval_losses(log_history: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """Step -> eval loss of every evaluation in the Trainer's log history (the last one
    logged at a step wins, as after a resume that evaluated the same step again)."""
    losses: dict[int, float] = {}
    for entry in log_history:
        loss, step = entry.get("eval_loss"), entry.get("step")
        if isinstance(loss, int | float) and math.isfinite(loss) and isinstance(step, int):
            losses[step] = float(loss)
    return losses


def best_step(steps: Iterable[int], log_history: Iterable[Mapping[str, Any]]) -> int | None:
    """Of ``steps``, the one with the lowest eval loss (earliest on a tie); None when none
    of them was evaluated."""
    losses = eval_losses(log_history)
    evaluated = [(losses[step], step) for step in steps if step in losses]
    return min(evaluated)[1] if evaluated else None
