"""The training pod's launcher around torchrun (builders.training.LAUNCHER).

torchrun exits 1 whatever its workers did, so the launcher maps the trainer's own verdict
(the reason in its termination log) to a pod exit code for the Job's pod failure policy.

Covers, with a stand-in torchrun on PATH that only writes a termination log with the
trainer's own function and exits (so these test the shell's mapping, nothing else):
arguments passed through unchanged; exit codes kept; invalid config/data mapped to
INVALID_INPUT_EXIT_CODE and a ``Stopped`` report to STOPPED_EXIT_CODE; a crash without
such a verdict stays 1.

And with the real process tree of a pod (slow): the launcher running the real torchrun
running two real trainer ranks (gloo, tiny model). SIGTERM to the launcher, once the log
shows step 7 of 24, ends it promptly with STOPPED_EXIT_CODE after both ranks stopped at
the same later step with a complete checkpoint, a ``Stopped`` termination log and no
final adapter; the stop file is gone afterwards; the launcher run again resumes from that
checkpoint and ends (exit 0) with the adapter of an uninterrupted run (rtol 1e-5, atol
1e-6).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qwenft_operator.builders.training import (
    INVALID_INPUT_EXIT_CODE,
    LAUNCHER_COMMAND,
    STOPPED_EXIT_CODE,
)
from qwenft_trainer import exit_codes
from support import free_port
from trainrun import (
    LiveRun,
    assert_same_adapter,
    events,
    train_env,
    write_config,
    write_dialogues,
)

STAND_IN_TORCHRUN = f"""#!{sys.executable}
import os, sys
print("args", " ".join(sys.argv[1:]), flush=True)
mode = sys.argv[1]
reason = sys.argv[2] if len(sys.argv) > 2 else ""
if mode == "report":
    from qwenft_trainer.summary import build_termination_message
    with open(os.environ["QWENFT_TERMINATION_LOG"], "w") as f:
        f.write(build_termination_message({{"status": "x", "reason": reason, "message": "m"}}))
    sys.exit(1)
if mode == "crash":
    sys.exit(1)
sys.exit(0)
"""


def launcher_env(tmp_path: Path, torchrun: str) -> dict[str, str]:
    """PATH with ``torchrun`` (the script given) first, the termination log in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "torchrun"
    script.write_text(torchrun)
    script.chmod(0o755)
    return {
        **train_env(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "QWENFT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return launcher_env(tmp_path, STAND_IN_TORCHRUN)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAUNCHER_COMMAND, *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_arguments_pass_through_and_success_is_kept(env: dict[str, str]) -> None:
    done = run(env, "ok", "--nnodes", "2", "--config", "/etc/qwenft/train.yaml")
    assert done.returncode == 0
    assert done.stdout.strip() == "args ok --nnodes 2 --config /etc/qwenft/train.yaml"


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("InvalidConfig", INVALID_INPUT_EXIT_CODE),
        ("InvalidDataset", INVALID_INPUT_EXIT_CODE),
        ("Stopped", STOPPED_EXIT_CODE),
        ("OutOfMemory", 1),  # any other failure is retried
    ],
)
def test_the_trainers_report_decides_the_exit_code(
    env: dict[str, str], reason: str, code: int
) -> None:
    """The trainer's own termination message (qwenft_trainer.summary) carries the reason."""
    assert run(env, "report", reason).returncode == code


def test_other_failures_keep_torchruns_exit_code(env: dict[str, str]) -> None:
    assert run(env, "crash").returncode == 1


# The SIGTERM must land after step SEEN and before the last step: steps take tens of ms
# here, so the steps between leave room for the log line's way to the test under load.
STEPS = 24
SEEN = 7


def real_torchrun_env(tmp_path: Path) -> dict[str, str]:
    """The real torchrun (this interpreter's torch.distributed.run) first on PATH."""
    return launcher_env(
        tmp_path, f'#!/bin/sh\nexec {sys.executable} -m torch.distributed.run "$@"\n'
    )


def launcher_args(config: Path) -> list[str]:
    return [
        *LAUNCHER_COMMAND,
        "--nproc-per-node", "2",
        "--master-port", str(free_port()),
        "-m", "qwenft_trainer.train",
        "--config", str(config),
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_and_exits_stopped(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = real_torchrun_env(tmp_path)
    log = Path(env["QWENFT_TERMINATION_LOG"])
    log.touch()
    # as in a pod: the launcher picks its stop file in TMPDIR (/tmp there)
    env.pop(exit_codes.STOP_FILE_ENV, None)
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    data = write_dialogues(tmp_path / "train.jsonl", count=24)

    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            data,
            tmp_path / name,
            lora={"r": 8, "alpha": 16, "dropout": 0.1},
            training={"max_steps": STEPS, "per_device_batch_size": 2},
            termination_log=str(log),
        )

    reference = subprocess.run(
        launcher_args(config("reference")), env=env, capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-4000:]

    stopped = config("stopped")
    live = LiveRun(launcher_args(stopped), env=env)
    try:
        seen = live.wait_for("train_log", lambda e: e["step"] >= SEEN, timeout=300)["step"]
        seconds = live.stop(signal.SIGTERM, timeout=60)
    finally:
        live.kill()
    assert live.proc.returncode == STOPPED_EXIT_CODE, live.stderr[-4000:]
    ends = events(live.stdout, "rank_end")
    step = ends[0]["step"]
    assert seen < step < STEPS
    assert sorted(e["rank"] for e in ends) == [0, 1] and {e["step"] for e in ends} == {step}
    assert events(live.stdout, "train_stopped")[0]["cause"] == "stop file"
    out = tmp_path / "stopped"
    assert (out / f"checkpoint-{step}" / "qwenft-complete").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    assert not (out / "summary.json").exists()
    assert json.loads(log.read_text())["reason"] == "Stopped"
    assert not list((tmp_path / "tmp").glob("qwenft-stop-*")), "the launcher removes its stop file"

    resumed = subprocess.run(
        launcher_args(stopped), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert events(resumed.stdout, "train_start")[0]["resumed_from_step"] == step
    diff = assert_same_adapter(out, tmp_path / "reference")
    record = {"seen": seen, "stopped_at": step, "exit_s": round(seconds, 2), "max_diff": diff}
    print("launcher stop-and-resume:", json.dumps(record))
