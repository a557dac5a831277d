"""Serving or merging a chosen checkpoint (qwenft_trainer.checkpoint_choice).

Covers: ``resolve_checkpoint`` on checkpoint directories (the final output for no choice, a
kept step, ``best`` by the eval losses of the log history, incomplete checkpoints ignored,
a missing step or an unevaluated ``best`` refused with the kept steps listed); pruning
keeps the best checkpoint beyond ``checkpoint.keep``; ``qwenft serve --checkpoint`` puts the
checkpoint in place of the adapter (or of a full fine-tune's model) and exits 4 for a
missing one. On a real tiny run that saves and evaluates every 2 steps: each checkpoint
holds a PEFT adapter; ``qwenft merge --checkpoint 4`` writes base + checkpoint-4's adapter
(weights equal to peft's own merge of that adapter within 1e-6) and differs from the final
merge; ``--checkpoint best`` merges the step whose logged eval loss is lowest; a pruned
step exits 4 with the kept ones named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_trainer import exit_codes
from qwenft_trainer.checkpoint_choice import (
    CheckpointNotFound,
    best_step,
    parse_choice,
    resolve_checkpoint,
)
from qwenft_trainer.checkpoints import MARKER, TRAINER_STATE, build_prune_plan, list_checkpoints
from qwenft_trainer.serve import main as serve_main
from qwenft_trainer.serve import resolve_served


def _checkpoint(root: Path, step: int, *, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / MARKER).write_text("{}\n")
    return path


def _log_history(path: Path, eval_losses: dict[int, float]) -> None:
    history: list[dict[str, Any]] = []
    for step, loss in sorted(eval_losses.items()):
        history.append({"step": step, "loss": loss + 0.1})  # a training log line
        history.append({"step": step, "eval_loss": loss})
    (path / TRAINER_STATE).write_text(json.dumps({"log_history": history}))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Kept 800, 900, 1000 (eval losses 1.2, 0.9, 1.1) and a half-written 1100."""
    root = tmp_path / "run"
    for step in (800, 900):
        _checkpoint(root, step)
    newest = _checkpoint(root, 1000)
    _checkpoint(root, 1100, complete=False)
    _log_history(newest, {700: 0.5, 800: 1.2, 900: 0.9, 1000: 1.1})
    return root


def test_no_choice_is_the_final_output(run_dir: Path) -> None:
    assert resolve_checkpoint(run_dir, None) == run_dir


def test_a_kept_step_resolves_to_its_directory(run_dir: Path) -> None:
    assert resolve_checkpoint(run_dir, 800) == run_dir / "checkpoint-800"


def test_best_is_the_kept_step_with_the_lowest_eval_loss(run_dir: Path) -> None:
    # step 700 evaluated lower but is no longer kept
    assert resolve_checkpoint(run_dir, "best") == run_dir / "checkpoint-900"


def test_a_missing_step_is_refused_with_the_kept_ones(run_dir: Path) -> None:
    with pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint(run_dir, 500)
    assert str(err.value) == (
        f"checkpoint 500 doesn't exist in {run_dir}; kept checkpoints: 800, 900, 1000 "
        "(best by eval loss: 900)"
    )


def test_a_half_written_checkpoint_is_not_served(run_dir: Path) -> None:
    with pytest.raises(CheckpointNotFound, match="checkpoint 1100 doesn't exist"):
        resolve_checkpoint(run_dir, 1100)


def test_best_without_an_evaluated_checkpoint_is_refused(tmp_path: Path) -> None:
    newest = _checkpoint(tmp_path, 10)
    _log_history(newest, {5: 1.0})
    with pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint(tmp_path, "best")
    assert "kept checkpoints: 10 (none evaluated)" in str(err.value)
    assert "evaluation.steps" in str(err.value)


def test_a_run_without_checkpoints_says_so(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound, match="no complete checkpoint is kept"):
        resolve_checkpoint(tmp_path, 3)


@pytest.mark.parametrize("text", ["0", "-3", "latest", "1.5", ""])
def test_parse_choice_refuses_what_is_not_a_step_or_best(text: str) -> None:
    with pytest.raises(ValueError, match="positive step number or 'best'"):
        parse_choice(text)


def test_parse_choice() -> None:
    assert parse_choice("900") == 900 and parse_choice("best") == "best"


def test_pruning_keeps_the_best_checkpoint(run_dir: Path) -> None:
    checkpoints = list_checkpoints(run_dir)
    doomed = build_prune_plan(checkpoints, 1, protect=900)
    assert [c.step for c in doomed] == [800]
    assert [c.step for c in build_prune_plan(checkpoints, 1)] == [800, 900]


def test_best_step_ties_go_to_the_earliest() -> None:
    history = [{"step": 4, "eval_loss": 0.5}, {"step": 2, "eval_loss": 0.5}]
    assert best_step([2, 4], history) == 2
    assert best_step([6], history) is None


def test_serve_puts_the_checkpoint_in_place_of_the_adapter(run_dir: Path) -> None:
    model, adapters = resolve_served("/models/base", [("demo", str(run_dir))], "best")
    assert (model, adapters) == ("/models/base", [("demo", str(run_dir / "checkpoint-900"))])
    full, none = resolve_served(str(run_dir), [], 800)
    assert (full, none) == (str(run_dir / "checkpoint-800"), [])
    assert resolve_served("m", [("a", "p")], None) == ("m", [("a", "p")])


def test_serve_exits_for_a_missing_checkpoint(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = serve_main(["--model", str(run_dir), "--served-model-name", "x", "--checkpoint", "5"])
    assert code == exit_codes.CHECKPOINT_NOT_FOUND
    assert "checkpoint 5 doesn't exist" in capsys.readouterr().err


# --- a real run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps, saved and evaluated every 2, keeping 2 (plus the best)."""
    from qwenft_trainer.train import main
    from trainrun import write_config, write_dialogues

    root = tmp_path_factory.mktemp("evaluated")
    data = write_dialogues(root / "train.jsonl", count=40)
    config = write_config(
        root / "train.yaml",
        tiny_model_dir,
        data,
        root / "out",
        training={"max_steps": 8, "learning_rate": 0.02},
        checkpoint={"save_steps": 2, "keep": 2},
        evaluation={"fraction": 0.2, "steps": 2},
    )
    assert main(["--config", str(config)]) == 0
    return root / "out"


def _merged_weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _peft_merge(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    merged = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_merge_a_chosen_checkpoint_of_a_real_run(
    evaluated_run: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwenft_trainer.merge import main as merge_main

    kept = [c.step for c in list_checkpoints(evaluated_run) if c.complete]
    assert kept[-2:] == [6, 8], kept
    for step in kept:
        assert (evaluated_run / f"checkpoint-{step}" / "adapter_model.safetensors").is_file()
    history = json.loads((evaluated_run / "checkpoint-8" / TRAINER_STATE).read_text())
    losses = {e["step"]: e["eval_loss"] for e in history["log_history"] if "eval_loss" in e}
    assert sorted(losses) == [2, 4, 6, 8]
    best = min(kept, key=lambda step: (losses[step], step))

    def merge(choice: str | None, output: Path) -> int:
        extra = ["--checkpoint", choice] if choice else []
        argv = ["--adapter", str(evaluated_run), "--output", str(output), *extra]
        return merge_main(argv)

    assert merge("6", tmp_path / "step6") == 0
    assert merge(None, tmp_path / "final") == 0
    step6 = _merged_weights(tmp_path / "step6")
    expected = _peft_merge(tiny_model_dir, evaluated_run / "checkpoint-6")
    assert _max_diff(step6, expected) <= 1e-6, "merged = base + checkpoint-6's adapter"
    assert _max_diff(step6, _merged_weights(tmp_path / "final")) > 1e-4, "not the final one"

    assert merge("best", tmp_path / "best") == 0
    assert "checkpoint best: " in capsys.readouterr().err
    expected_best = _peft_merge(tiny_model_dir, evaluated_run / f"checkpoint-{best}")
    assert _max_diff(_merged_weights(tmp_path / "best"), expected_best) <= 1e-6

    pruned = next(step for step in (2, 4) if step not in kept)
    assert merge(str(pruned), tmp_path / "gone") == exit_codes.CHECKPOINT_NOT_FOUND
    error = capsys.readouterr().err
    listed = ", ".join(str(step) for step in kept)
    assert f"checkpoint {pruned} doesn't exist" in error
    assert f"kept checkpoints: {listed} (best by eval loss: {best})" in error
    assert not (tmp_path / "gone").exists()
