"""The training pod's launcher around torchrun (builders.training.LAUNCHER).

torchrun exits 1 whatever its workers did, so the launcher maps the trainer's own verdict
(the reason in its termination log) to INVALID_INPUT_EXIT_CODE for the Job's pod failure
policy. Covers, with a stand-in torchrun on PATH: arguments passed through unchanged;
exit codes kept; invalid config/data mapped; a crash without that verdict stays 1;
SIGTERM reaches torchrun (so it can checkpoint) and its exit code is kept. The stand-in
writes its termination log with the trainer's own function, so a format change shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qwenft_operator.builders.training import INVALID_INPUT_EXIT_CODE, LAUNCHER_COMMAND

FAKE_TORCHRUN = f"""#!{sys.executable}
import os, signal, sys, time
print("args", " ".join(sys.argv[1:]), flush=True)
mode = sys.argv[1]
log = os.environ["QWENFT_TERMINATION_LOG"]
mode_reason = sys.argv[2] if len(sys.argv) > 2 else ""
if mode == "invalid":
    from qwenft_trainer.summary import build_termination_message
    with open(log, "w") as f:
        fields = {{"status": "failed", "reason": mode_reason, "message": "bad"}}
        f.write(build_termination_message(fields))
    sys.exit(1)
if mode == "crash":
    sys.exit(1)
if mode == "wait":
    def stop(*_):
        print("checkpoint on SIGTERM", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    time.sleep(60)
sys.exit(0)
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "torchrun"
    fake.write_text(FAKE_TORCHRUN)
    fake.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "QWENFT_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAUNCHER_COMMAND, *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_arguments_pass_through_and_success_is_kept(env: dict[str, str]) -> None:
    done = run(env, "ok", "--nnodes", "2", "--config", "/etc/qwenft/train.yaml")
    assert done.returncode == 0
    assert done.stdout.strip() == "args ok --nnodes 2 --config /etc/qwenft/train.yaml"


@pytest.mark.parametrize("reason", ["InvalidConfig", "InvalidDataset"])
def test_invalid_input_gets_its_own_exit_code(env: dict[str, str], reason: str) -> None:
    """The trainer's own termination message (qwenft_trainer.summary) marks bad input."""
    assert run(env, "invalid", reason).returncode == INVALID_INPUT_EXIT_CODE


def test_a_failure_with_another_reason_is_retried(env: dict[str, str]) -> None:
    assert run(env, "invalid", "OutOfMemory").returncode == 1


def test_other_failures_keep_torchruns_exit_code(env: dict[str, str]) -> None:
    assert run(env, "crash").returncode == 1


def test_sigterm_reaches_torchrun(env: dict[str, str]) -> None:
    proc = subprocess.Popen([*LAUNCHER_COMMAND, "wait"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.strip() == "ready":
            break
    assert lines[-1].strip() == "ready", lines
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert "checkpoint on SIGTERM" in out
    assert proc.returncode == 143
