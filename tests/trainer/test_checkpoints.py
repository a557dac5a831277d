"""Complete-checkpoint markers, choosing where to resume, and pruning.

Covers: checkpoints listed by step (not by name order); a half-written checkpoint (no
marker) never chosen for resuming even when it is the newest; the marker written
atomically; the prune plan keeping the newest K complete ones, dropping stale partials
and leaving a partial newer than every complete one alone; the Trainer callback marking
and pruning on save; ``remove_incomplete`` at start; a checkpoint at the last planned
step recognised as final and its model files exported without the training state.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from qwenft_trainer.checkpoints import (
    MARKER,
    Checkpoint,
    CheckpointCallback,
    build_prune_plan,
    export_final,
    is_final,
    list_checkpoints,
    mark_complete,
    newest_complete,
    prune,
    remove_incomplete,
)


def make(root: Path, step: int, *, complete: bool) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        mark_complete(path, step=step)
    return path


def test_listing_sorts_by_step_and_ignores_other_dirs(tmp_path: Path) -> None:
    for step in (10, 2, 100):
        make(tmp_path, step, complete=True)
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "checkpoint-7").write_text("a file, not a checkpoint")
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 10, 100]
    assert list_checkpoints(tmp_path / "missing") == []


def test_half_written_newest_checkpoint_is_not_resumed_from(tmp_path: Path) -> None:
    make(tmp_path, 4, complete=True)
    make(tmp_path, 8, complete=True)
    make(tmp_path, 12, complete=False)  # killed while writing
    newest = newest_complete(tmp_path)
    assert newest is not None
    assert newest.step == 8
    assert newest.path == tmp_path / "checkpoint-8"
    assert newest_complete(tmp_path / "empty") is None


def test_marker_is_written_atomically_with_the_step(tmp_path: Path) -> None:
    path = make(tmp_path, 3, complete=False)
    marker = mark_complete(path, step=3)
    assert marker == path / MARKER
    assert json.loads(marker.read_text())["step"] == 3
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []


def test_prune_plan_keeps_newest_complete_and_drops_stale_partials() -> None:
    def c(step: int, complete: bool = True) -> Checkpoint:
        return Checkpoint(Path(f"checkpoint-{step}"), step, complete)

    checkpoints = [c(2), c(4, False), c(6), c(8), c(10), c(12, False)]
    plan = build_prune_plan(checkpoints, keep=2)
    # 2 and 6 are complete but old; 4 is a crash leftover; 12 may still be being written
    assert [p.step for p in plan] == [2, 4, 6]
    assert build_prune_plan([c(5, False)], keep=1) == []


def test_prune_and_remove_incomplete_delete_directories(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make(tmp_path, step, complete=True)
    make(tmp_path, 4, complete=False)
    removed = prune(tmp_path, keep=1)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-2"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 4]
    assert remove_incomplete(tmp_path) == [tmp_path / "checkpoint-4"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [3]


def test_callback_marks_on_save_and_prunes(tmp_path: Path) -> None:
    callback = CheckpointCallback(keep=2)
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step in (5, 10, 15):
        make(tmp_path, step, complete=False)
        state = SimpleNamespace(global_step=step, is_world_process_zero=True, log_history=[])
        callback.on_save(args, state, SimpleNamespace())  # type: ignore[arg-type]
    assert [(c.step, c.complete) for c in list_checkpoints(tmp_path)] == [(10, True), (15, True)]


def test_callback_keeps_the_best_checkpoint_by_eval_loss(tmp_path: Path) -> None:
    callback = CheckpointCallback(keep=1)
    args = SimpleNamespace(output_dir=str(tmp_path))
    history: list[dict[str, float]] = []
    for step, loss in ((5, 0.9), (10, 0.4), (15, 0.7), (20, 0.8)):
        make(tmp_path, step, complete=False)
        history.append({"step": step, "eval_loss": loss})
        state = SimpleNamespace(global_step=step, is_world_process_zero=True, log_history=history)
        callback.on_save(args, state, SimpleNamespace())  # type: ignore[arg-type]
    assert [c.step for c in list_checkpoints(tmp_path)] == [10, 20]


def test_callback_on_other_ranks_writes_nothing(tmp_path: Path) -> None:
    callback = CheckpointCallback(keep=2)
    make(tmp_path, 5, complete=False)
    state = SimpleNamespace(global_step=5, is_world_process_zero=False)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, SimpleNamespace())  # type: ignore[arg-type]
    assert not (tmp_path / "checkpoint-5" / MARKER).exists()


def test_final_checkpoint_detected_and_exported_without_training_state(tmp_path: Path) -> None:
    path = make(tmp_path, 10, complete=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 10, "max_steps": 10}))
    (path / "optimizer.pt").write_bytes(b"o")
    (path / "rng_state_1.pth").write_bytes(b"r")
    (path / "global_step10").mkdir()
    middle = make(tmp_path, 5, complete=True)
    (middle / "trainer_state.json").write_text(json.dumps({"global_step": 5, "max_steps": 10}))
    final, earlier = newest_complete(tmp_path), list_checkpoints(tmp_path)[0]
    assert final is not None and is_final(final, -1) and not is_final(earlier, -1)
    assert is_final(final, 10) and not is_final(final, 12)  # max_steps raised: train on
    out = tmp_path / "out"
    out.mkdir()
    copied = export_final(final, out)
    assert sorted(p.name for p in copied) == ["adapter_model.safetensors"]
