"""A run stopped by SIGTERM: checkpoint after the current step, exit 75, resume exactly.

Covers, with the real trainer: ``qwenft train`` (one process) sent SIGTERM once its log
shows step 13 of 24, and two ranks under torchrun where only rank 1 gets SIGTERM (both
must stop after the same step, the collective in qwenft_trainer.stopping). Each stopped
run exits promptly with 75 (under torchrun: both ranks, whose exits torchrun reports),
logs ``train_stopped`` with a complete ``checkpoint-N`` (N past the step seen, inside
the second epoch: the resume must skip into the middle of an epoch), writes a
``Stopped`` termination log, and leaves neither the final adapter nor ``summary.json``.
Run again, it resumes from N, trains N+1..24 and ends with the adapter of an
uninterrupted run (rtol 1e-5, atol 1e-6), LoRA dropout on so the RNG state must come
back too. The pod launcher around torchrun is tested in tests/operator/test_train_launcher.py.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from qwenft_trainer import exit_codes
from qwenft_trainer.checkpoints import MARKER, list_checkpoints
from trainrun import (
    LiveRun,
    assert_same_adapter,
    events,
    run,
    torchrun,
    write_config,
    write_dialogues,
)

pytestmark = pytest.mark.slow

# The SIGTERM must land after step SEEN and before the epoch's end: steps take tens of ms
# here, so the ten steps between leave room for the log line's way to the test under load.
STEPS = 24
SEEN = 13  # SIGTERM once the log shows this step
ROWS = 48  # 4 rows per step: an epoch is 12 steps, so SEEN and later sit in the second one
STEPS_PER_EPOCH = 12
EXIT_SECONDS = 60.0  # a generous bound on two loaded cores; measured values are ~2-10 s


def stop_config(root: Path, model: Path, name: str, *, ranks: int) -> Path:
    (root / f"{name}.termination-log").touch()  # written only where the file exists
    return write_config(
        root / f"{name}.yaml",
        model,
        root / "train.jsonl",
        root / name,
        lora={"r": 8, "alpha": 16, "dropout": 0.1},
        training={"max_steps": STEPS, "per_device_batch_size": 4 // ranks},
        checkpoint={"save_steps": 100, "keep": 2},
        termination_log=str(root / f"{name}.termination-log"),
    )


def single(config: Path) -> list[str]:
    return [sys.executable, "-m", "qwenft_operator.cli", "train", "--config", str(config)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stop")
    write_dialogues(path / "train.jsonl", count=ROWS)
    return path


def check_stopped(live: LiveRun, config: Path, seen: int) -> int:
    """What every stopped run must leave; returns the checkpoint step."""
    out = Path(config.parent / config.stem)
    stopped = events(live.stdout, "train_stopped")
    assert len(stopped) == 1, live.stdout[-3000:] + live.stderr[-3000:]
    step = int(stopped[0]["step"])
    assert seen < step < STEPS, "the run should stop after the step it was in"
    assert step % STEPS_PER_EPOCH != 0, "the stop should fall inside an epoch"
    assert stopped[0]["checkpoint"] == str(out / f"checkpoint-{step}")
    newest = list_checkpoints(out)[-1]
    assert (newest.step, newest.complete) == (step, True)
    assert json.loads((out / f"checkpoint-{step}" / MARKER).read_text())["step"] == step
    assert not (out / "summary.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    assert not events(live.stdout, "train_end")
    report = json.loads(Path(f"{out}.termination-log").read_text())
    assert report["reason"] == "Stopped" and report["status"] == "stopped"
    assert report["step"] == step and report["checkpoint"] == stopped[0]["checkpoint"]
    return step


def check_resumed(stdout: str, out: Path, reference: Path, step: int) -> float:
    start = events(stdout, "train_start")[0]
    assert start["resumed_from_step"] == step
    assert [e["step"] for e in events(stdout, "train_log")] == list(range(step + 1, STEPS + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["steps"] == STEPS
    assert summary["resumed_from_step"] == step
    return assert_same_adapter(out, reference)


def report(record: dict[str, Any]) -> None:
    print("stop-and-resume:", json.dumps(record))


def test_qwenft_train_stops_on_sigterm_and_resumes(root: Path, tiny_model_dir: Path) -> None:
    reference = stop_config(root, tiny_model_dir, "single-reference", ranks=1)
    run(single(reference))
    config = stop_config(root, tiny_model_dir, "single", ranks=1)
    live = LiveRun(single(config))
    try:
        seen = live.wait_for("train_log", lambda e: e["step"] >= SEEN, timeout=240)["step"]
        seconds = live.stop(signal.SIGTERM, timeout=EXIT_SECONDS)
    finally:
        live.kill()
    assert live.proc.returncode == exit_codes.STOPPED, live.stderr[-4000:]
    step = check_stopped(live, config, seen)
    assert events(live.stdout, "train_stopped")[0]["cause"] == "SIGTERM"

    resumed = run(single(config))
    diff = check_resumed(resumed.stdout, root / "single", root / "single-reference", step)
    report({"seen": seen, "stopped_at": step, "exit_s": round(seconds, 2), "max_diff": diff})


def test_sigterm_to_one_rank_stops_both_after_the_same_step(
    root: Path, tiny_model_dir: Path
) -> None:
    reference = stop_config(root, tiny_model_dir, "ranks-reference", ranks=2)
    run(torchrun(2, reference))
    config = stop_config(root, tiny_model_dir, "ranks", ranks=2)
    live = LiveRun(torchrun(2, config))
    try:
        seen = live.wait_for("train_log", lambda e: e["step"] >= SEEN, timeout=300)["step"]
        workers = psutil.Process(live.proc.pid).children(recursive=True)
        rank1 = next(w for w in workers if w.environ().get("RANK") == "1")
        seconds = live.stop(signal.SIGTERM, timeout=EXIT_SECONDS, pid=rank1.pid)
    finally:
        live.kill()
    step = check_stopped(live, config, seen)
    ends = sorted(events(live.stdout, "rank_end"), key=lambda e: e["rank"])
    assert ends == [{"event": "rank_end", "rank": r, "step": step, "stopped": True} for r in (0, 1)]
    # rank 0 never got the signal: it stopped because rank 1 asked
    assert events(live.stdout, "train_stopped")[0]["cause"] == "another rank"
    # torchrun itself exits 1 for any failed worker; it reports the workers' codes (the
    # second one only when it exits before torchrun's report is written, so at least one)
    assert live.proc.returncode != 0
    assert live.stderr.count(f"exitcode  : {exit_codes.STOPPED} ") >= 1, live.stderr[-3000:]

    resumed = run(torchrun(2, config))
    diff = check_resumed(resumed.stdout, root / "ranks", root / "ranks-reference", step)
    report({"seen": seen, "stopped_at": step, "exit_s": round(seconds, 2), "max_diff": diff})
