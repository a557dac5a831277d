"""Two torchrun "nodes" on one machine: one node dies, the other leaves promptly, both resume.

The operator runs a multi-node job as a gang (docs/qwenfinetune.md, "Restarts of
multi-node runs"): when one node's pod dies, every rank must leave rather than wait in a
collective for a peer that will never answer, and the fresh gang resumes from the newest
complete checkpoint. Covers, with the real trainer and two ``torchrun --nnodes 2
--node-rank 0|1 --nproc-per-node 1`` launches on 127.0.0.1 (gloo), both writing one output
directory as the pods of one run share a volume:
- once a periodic checkpoint is complete, node 1 (its torchrun and its rank) is SIGKILLed,
  as when its node is lost; node 0's torchrun then exits non-zero within
  ``EXIT_SECONDS`` (far below gloo's 30-minute collective timeout), its rank saying
  ``peer_lost`` in a JSON line and on stderr, and its termination log holding reason
  ``PeerLost``;
- both nodes started again resume from the newest complete checkpoint and end with the
  adapter of an uninterrupted two-rank run (rtol 1e-5, atol 1e-6).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from qwenft_trainer.checkpoints import newest_complete
from support import free_port, poll
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

STEPS = 12
SAVE_STEPS = 3
ROWS = 24
# gloo raises on a closed connection at the next collective; measured ~1-5 s on two
# loaded cores. Far below the collective timeout (30 min for gloo, 10 for NCCL).
EXIT_SECONDS = 60.0


def gang_config(root: Path, model: Path, name: str) -> Path:
    (root / f"{name}.termination-log").touch()  # written only where the file exists
    return write_config(
        root / f"{name}.yaml",
        model,
        root / "train.jsonl",
        root / name,
        lora={"r": 8, "alpha": 16, "dropout": 0.1},
        training={"max_steps": STEPS, "per_device_batch_size": 2},
        checkpoint={"save_steps": SAVE_STEPS, "keep": 2},
        termination_log=str(root / f"{name}.termination-log"),
    )


def node(rank: int, port: int, config: Path) -> list[str]:
    """One node's torchrun, as the training pod of node rank ``rank`` runs it."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "qwenft_trainer.train", "--config", str(config),
    ]  # fmt: skip


def kill_node(live: LiveRun) -> None:
    """SIGKILL a node's torchrun and its rank at once, as a lost node takes both."""
    family = [psutil.Process(live.proc.pid), *psutil.Process(live.proc.pid).children(True)]
    for member in family:
        member.send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gang")
    write_dialogues(path / "train.jsonl", count=ROWS)
    return path


def report(record: dict[str, Any]) -> None:
    print("gang-restart:", json.dumps(record))


def test_lost_node_ends_the_other_promptly_and_the_gang_resumes(
    root: Path, tiny_model_dir: Path
) -> None:
    reference = gang_config(root, tiny_model_dir, "reference")
    run(torchrun(2, reference))
    config = gang_config(root, tiny_model_dir, "gang")
    out = root / "gang"
    port = free_port()
    zero, one = LiveRun(node(0, port, config)), LiveRun(node(1, port, config))
    try:
        poll(lambda: newest_complete(out), timeout=300, what="a complete checkpoint")
        kill_node(one)
        killed = time.monotonic()
        zero.proc.wait(timeout=EXIT_SECONDS)
        seconds = time.monotonic() - killed
    finally:
        zero.kill()
        one.kill()
    lost_at = newest_complete(out)
    assert lost_at is not None and lost_at.step < STEPS, "the run finished before the kill"
    assert zero.proc.returncode != 0
    lost = events(zero.stdout, "peer_lost")
    assert len(lost) == 1 and lost[0]["rank"] == 0, zero.stdout[-3000:] + zero.stderr[-3000:]
    assert "lost contact with another rank" in zero.stderr
    termination = json.loads(Path(f"{out}.termination-log").read_text())
    assert termination["reason"] == "PeerLost" and termination["status"] == "failed"
    assert not (out / "summary.json").exists()

    # the gang starts again: both nodes, from the newest complete checkpoint
    resume_at = newest_complete(out)
    assert resume_at is not None
    port = free_port()
    zero, one = LiveRun(node(0, port, config)), LiveRun(node(1, port, config))
    try:
        for live in (zero, one):
            live.proc.wait(timeout=300)
    finally:
        zero.kill()
        one.kill()
    assert (zero.proc.returncode, one.proc.returncode) == (0, 0), zero.stderr[-4000:]
    start = events(zero.stdout, "train_start")[0]
    assert start["resumed_from_step"] == resume_at.step
    steps = [e["step"] for e in events(zero.stdout, "train_log")]
    assert steps == list(range(resume_at.step + 1, STEPS + 1))
    diff = assert_same_adapter(out, root / "reference")
    report({"resumed_from": resume_at.step, "exit_s": round(seconds, 2), "max_diff": diff})
