"""The progress reader: trainer metrics -> status.progress.

Covers: parsing a /metrics page (the run label filter, gauges still at 0 read as "not
logged yet", integers for steps, the Progress column text, resumedFromStep, the last
checkpoint step, the checkpoints on disk); status.checkpoints mirroring the trainer's list
of complete checkpoints on disk (pruned ones gone, time written, path in the output dir),
and for a trainer without that list a record per new step cut to checkpoint.keep; picking
the rank-0 training pod; an unreachable trainer reads as None; and, marked slow, a REAL
local training run (tiny model, ``qwenft_trainer.train`` in a subprocess serving its
metrics endpoint) scraped with :func:`fetch_progress` until it reports steps and a complete
checkpoint, with the totals, learning rate and loss the trainer publishes, and the
checkpoints it lists all complete on disk.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from qwenft_operator.observe import PodFacts
from qwenft_operator.progress import (
    TrainerProgress,
    build_checkpoints,
    fetch_progress,
    metrics_url,
    parse_progress,
    rank_zero,
)
from qwenft_operator.status import CheckpointRecord, Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from support import free_port, poll
from trainrun import train_env, write_config, write_dialogues

PAGE = """\
# HELP qwenft_train_step Optimizer steps done.
# TYPE qwenft_train_step gauge
qwenft_train_step{run="demo"} 42.0
qwenft_train_step{run="other"} 7.0
# TYPE qwenft_train_total_steps gauge
qwenft_train_total_steps{run="demo"} 300.0
# TYPE qwenft_train_epoch gauge
qwenft_train_epoch{run="demo"} 0.5
# TYPE qwenft_train_loss gauge
qwenft_train_loss{run="demo"} 1.25
# TYPE qwenft_train_eval_loss gauge
qwenft_train_eval_loss{run="demo"} 0.0
# TYPE qwenft_train_learning_rate gauge
qwenft_train_learning_rate{run="demo"} 0.0002
# TYPE qwenft_train_tokens_per_second gauge
qwenft_train_tokens_per_second{run="demo"} 1234.5
# TYPE qwenft_train_eta_seconds gauge
qwenft_train_eta_seconds{run="demo"} 600.0
# TYPE qwenft_train_resumed_from_step gauge
qwenft_train_resumed_from_step{run="demo"} 40.0
# TYPE qwenft_train_last_checkpoint_step gauge
qwenft_train_last_checkpoint_step{run="demo"} 40.0
"""


def test_parse_progress() -> None:
    found = parse_progress(PAGE, run="demo")
    progress = found.progress
    assert (progress.step, progress.total_steps, progress.epoch) == (42, 300, 0.5)
    assert (progress.loss, progress.learning_rate) == (1.25, 0.0002)
    assert progress.eval_loss is None  # still 0: no evaluation yet
    assert (progress.tokens_per_second, progress.eta_seconds) == (1234.5, 600.0)
    assert progress.display == "42/300"
    assert found.resumed_from_step == 40
    assert found.last_checkpoint_step == 40
    other = parse_progress(PAGE, run="other")
    assert other.progress.step == 7
    assert other.last_checkpoint_step is None  # no checkpoint series for that run


T0 = datetime(2026, 1, 1, tzinfo=UTC)


ON_DISK = """\
# HELP qwenft_train_checkpoint_time_seconds Unix time each complete checkpoint was written.
# TYPE qwenft_train_checkpoint_time_seconds gauge
qwenft_train_checkpoint_time_seconds{run="demo",step="600"} 1767225900.0
qwenft_train_checkpoint_time_seconds{run="demo",step="400"} 1767225600.0
qwenft_train_checkpoint_time_seconds{run="demo",step="500"} 1767225750.0
qwenft_train_checkpoint_time_seconds{run="other",step="7"} 1767225000.0
"""


def test_parse_checkpoints_on_disk() -> None:
    found = parse_progress(PAGE + ON_DISK, run="demo")
    assert found.checkpoints == ((400, 1767225600.0), (500, 1767225750.0), (600, 1767225900.0))
    assert parse_progress(PAGE, run="demo").checkpoints is None  # the trainer lists none
    listed_empty = parse_progress(PAGE + "".join(ON_DISK.splitlines(True)[:2]), run="demo")
    assert listed_empty.checkpoints == ()  # listed: none on disk


def steps(records: list[CheckpointRecord]) -> list[int]:
    return [r.step for r in records]


def test_status_checkpoints_mirror_the_trainers_list_after_pruning() -> None:
    """keep=3 on disk: status names exactly what exists, never a pruned path."""
    seen = [
        CheckpointRecord(step=step, path=f"/output/demo/checkpoint-{step}", time=T0)
        for step in (100, 200, 300, 400)
    ]
    found = parse_progress(PAGE + ON_DISK, run="demo")
    records = build_checkpoints(seen, found, "/output/demo", T0, keep=3)
    assert [(r.step, r.path) for r in records] == [
        (step, f"/output/demo/checkpoint-{step}") for step in (400, 500, 600)
    ]
    assert records[0].time == datetime.fromtimestamp(1767225600, UTC)  # when it was written
    nothing = TrainerProgress(progress=found.progress, checkpoints=())
    assert build_checkpoints(records, nothing, "/output/demo", T0, keep=3) == []


def test_checkpoint_records_of_an_older_trainer_follow_checkpoint_keep() -> None:
    """A trainer that exports no list: each new step appended, cut to checkpoint.keep."""

    def newest(step: int | None) -> TrainerProgress:
        return TrainerProgress(progress=Progress(), last_checkpoint_step=step)

    records = build_checkpoints([], newest(100), "/output/demo", T0, keep=3)
    assert [(r.step, r.path, r.time) for r in records] == [(100, "/output/demo/checkpoint-100", T0)]
    # the same step on the next scrape: unchanged, time kept
    later = T0 + timedelta(minutes=1)
    assert build_checkpoints(records, newest(100), "/output/demo", later, keep=3) == records
    assert build_checkpoints(records, newest(None), "/output/demo", T0, keep=3) == records
    for step in range(200, 700, 100):
        records = build_checkpoints(records, newest(step), "/output/demo", T0, keep=3)
    assert steps(records) == [400, 500, 600]


def test_rank_zero_pod() -> None:
    pods = [
        PodFacts("r-train-1", "train", "Running", pod_ip="10.0.0.2", completion_index=1),
        PodFacts("r-train-0", "train", "Pending", completion_index=0),
        PodFacts("r-train-0b", "train", "Running", pod_ip="10.0.0.3", completion_index=0),
    ]
    pod = rank_zero(pods)
    assert pod is not None and pod.name == "r-train-0b"
    assert metrics_url(pod) == "http://10.0.0.3:9400/metrics"
    assert rank_zero(pods[:2]) is None


def scrape(url: str, run: str | None = None) -> TrainerProgress | None:
    async def once() -> TrainerProgress | None:
        async with httpx.AsyncClient() as http:
            return await fetch_progress(http, url, run=run, timeout=2)

    return asyncio.run(once())


def test_unreachable_trainer_reads_as_none() -> None:
    assert scrape(f"http://127.0.0.1:{free_port()}/metrics") is None


@pytest.mark.slow
def test_reads_progress_of_a_real_training_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "train.yaml",
        tiny_model_dir,
        write_dialogues(tmp_path / "data.jsonl", count=64),
        tmp_path / "out",
        metrics_port=port,
        run_name="progress-demo",
        training={"max_steps": 400},
        checkpoint={"save_steps": 2, "keep": 100},  # none pruned before the check
    )
    cmd = [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config)]
    proc = subprocess.Popen(
        cmd, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def checkpointed() -> TrainerProgress | None:
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else "")[-3000:]
            found = scrape(url, run="progress-demo")
            return found if found is not None and found.last_checkpoint_step is not None else None

        found = poll(checkpointed, timeout=240, what="a checkpoint in the progress", interval=0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    progress = found.progress
    assert progress.total_steps == 400
    assert progress.display == f"{progress.step}/400"
    assert progress.learning_rate is not None and progress.learning_rate > 0
    assert progress.loss is not None and progress.loss > 0
    assert found.resumed_from_step == 0
    step = found.last_checkpoint_step
    assert step % 2 == 0 and 2 <= step <= (progress.step or 0)
    assert (tmp_path / "out" / f"checkpoint-{step}" / "qwenft-complete").is_file()
    assert found.checkpoints is not None and step in dict(found.checkpoints)
    for listed, _ in found.checkpoints:  # keep=100: none pruned since the scrape
        assert (tmp_path / "out" / f"checkpoint-{listed}" / "qwenft-complete").is_file()
