"""Training under torchrun with two CPU processes (gloo), and what a running job exports.

Covers: DDP, DeepSpeed ZeRO-2, ZeRO-3, and ZeRO-3 with optimizer and parameters offloaded
to the CPU (DeepSpeed's CPU accelerator, ``DS_ACCELERATOR=cpu``, over gloo), each training
LoRA with both ranks ending at the same step and loss; every DeepSpeed mode following the
DDP run's loss curve (same seed, same data); each saving a loadable peft adapter (ZeRO-3
gathers its shards for it); a run SIGKILLed (launcher and ranks at once, as when a pod
dies) after a complete checkpoint resuming from it on restart, logging and reporting that
step, continuing from the next one and ending with the same adapter as an uninterrupted
run; the Prometheus endpoint serving every documented series with the run label while a
training run is in progress; two ranks with gradient accumulation following the loss and
gradient-norm curve of one process that sees the same rows in one batch.

DeepSpeed builds its ops on first use and caches them in ~/.cache/qwenft/torch_extensions:
the shared-memory comm op (about 90 s on two cores) and, for offload, CPU Adam (about 5 min).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from qwenft_trainer.checkpoints import newest_complete
from safetensors.torch import load_file
from support import free_port, poll
from trainrun import (
    events,
    run,
    torchrun,
    train_env,
    write_config,
    write_dialogues,
)

pytestmark = pytest.mark.slow

STEPS = 6
DEEPSPEED = {
    "ddp": {"enabled": False},
    "zero2": {"enabled": True, "zero_stage": 2},
    "zero3": {"enabled": True, "zero_stage": 3},
    "zero3_offload": {
        "enabled": True,
        "zero_stage": 3,
        "offload_optimizer": True,
        "offload_parameters": True,
    },
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dist")
    write_dialogues(path / "train.jsonl")
    return path


def config_for(
    workdir: Path,
    model: Path,
    name: str,
    mode: str = "ddp",
    training: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    # effective batch 4 = 1 per device x 2 accumulation x 2 processes
    batch = {"max_steps": STEPS, "per_device_batch_size": 1, "gradient_accumulation_steps": 2}
    return write_config(
        workdir / f"{name}.yaml",
        model,
        workdir / "train.jsonl",
        workdir / name,
        deepspeed=DEEPSPEED[mode],
        training={**batch, **(training or {})},
        checkpoint={"save_steps": 2, "keep": 2},
        **extra,
    )


@pytest.fixture(scope="module")
def runs(workdir: Path, tiny_model_dir: Path) -> dict[str, str]:
    """stdout of each mode's uninterrupted two-process run."""
    return {}


def train_mode(runs: dict[str, str], workdir: Path, model: Path, mode: str) -> str:
    if mode not in runs:
        runs[mode] = run(torchrun(2, config_for(workdir, model, mode, mode))).stdout
    return runs[mode]


@pytest.mark.parametrize("mode", list(DEEPSPEED))
def test_two_processes_train_and_agree(
    mode: str, runs: dict[str, str], workdir: Path, tiny_model_dir: Path
) -> None:
    stdout = train_mode(runs, workdir, tiny_model_dir, mode)
    ends = sorted(events(stdout, "rank_end"), key=lambda e: e["rank"])
    assert [e["rank"] for e in ends] == [0, 1]
    assert ends[0]["step"] == ends[1]["step"] == STEPS
    assert ends[0]["loss"] == pytest.approx(ends[1]["loss"], abs=1e-6)
    start = events(stdout, "train_start")[0]
    assert start["world_size"] == 2 and start["effective_batch_size"] == 4
    summary = json.loads((workdir / mode / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS

    adapter = load_file(workdir / mode / "adapter_model.safetensors")
    assert len(adapter) == 2 * 7 * 2
    assert all(t.numel() > 0 and torch.isfinite(t).all() for t in adapter.values())
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)

    if mode != "ddp":
        reference = [
            e["loss"]
            for e in events(train_mode(runs, workdir, tiny_model_dir, "ddp"))
            if e["event"] == "train_log"
        ]
        losses = [e["loss"] for e in events(stdout, "train_log")]
        # same seed, initialisation and data: the same loss curve as DDP
        assert losses[0] == pytest.approx(reference[0], abs=1e-5)
        assert losses == pytest.approx(reference, abs=1e-3)


def test_two_processes_with_accumulation_follow_one_process(
    runs: dict[str, str], workdir: Path, tiny_model_dir: Path
) -> None:
    """1 x 2 accumulation x 2 ranks and 4 x 1 x 1 rank train on the same 4 rows per step."""
    config = config_for(
        workdir,
        tiny_model_dir,
        "single",
        training={"per_device_batch_size": 4, "gradient_accumulation_steps": 1},
    )
    single = run([sys.executable, "-m", "qwenft_trainer.train", "--config", str(config)])
    two = train_mode(runs, workdir, tiny_model_dir, "ddp")
    for key in ("loss", "grad_norm"):
        one_curve = [e[key] for e in events(single.stdout, "train_log")]
        two_curve = [e[key] for e in events(two, "train_log")]
        assert len(one_curve) == STEPS
        assert two_curve == pytest.approx(one_curve, abs=1e-4), key


def test_sigkilled_run_resumes_from_last_complete_checkpoint(
    runs: dict[str, str], workdir: Path, tiny_model_dir: Path
) -> None:
    train_mode(runs, workdir, tiny_model_dir, "ddp")  # the uninterrupted reference
    config = config_for(workdir, tiny_model_dir, "killed")
    out = workdir / "killed"
    log = (workdir / "killed.log").open("w")
    proc = subprocess.Popen(
        torchrun(2, config),
        env=train_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        poll(lambda: newest_complete(out), timeout=240, what="a complete checkpoint", interval=0.05)
    finally:
        kill_tree(proc)  # the whole pod at once: the agent and both ranks
        log.close()
    killed_at = newest_complete(out)
    assert killed_at is not None and killed_at.step < STEPS, "the run finished before the kill"
    assert not (out / "summary.json").exists()

    restarted = run(torchrun(2, config))
    start = events(restarted.stdout, "train_start")[0]
    assert start["resumed_from_step"] == killed_at.step
    steps = [e["step"] for e in events(restarted.stdout, "train_log")]
    assert steps == list(range(killed_at.step + 1, STEPS + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at.step and summary["steps"] == STEPS

    resumed = load_file(out / "adapter_model.safetensors")
    reference = load_file(workdir / "ddp" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_metrics_endpoint_serves_series_during_a_run(workdir: Path, tiny_model_dir: Path) -> None:
    from test_telemetry import documented_trainer_series

    port = free_port()
    config = config_for(
        workdir,
        tiny_model_dir,
        "metrics",
        metrics_port=port,
        run_name="metrics-run",
        evaluation={"fraction": 0.2, "steps": 2},
    )
    cmd = [
        sys.executable,
        "-m",
        "qwenft_trainer.train",
        "--config",
        str(config),
        "--max-steps",
        "200",
        "--save-steps",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        env=train_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def scrape() -> str | None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        except OSError:
            return None
        text = body.decode()
        # each series appears with its first value: the loss at the first logging step, the
        # eval loss at the first evaluation, the checkpoint step at the first checkpoint
        logged = all(
            f'{name}{{run="metrics-run"}}' in text
            for name in (
                "qwenft_train_loss",
                "qwenft_train_eval_loss",
                "qwenft_train_last_checkpoint_step",
            )
        )
        return text if logged and _step(text) >= 2 else None

    try:
        text = poll(scrape, timeout=240, what="training metrics on the endpoint", interval=0.5)
        assert proc.poll() is None, "the run should still be in progress"
    finally:
        kill_tree(proc)
    expected = {n for n in documented_trainer_series() if "gpu_memory" not in n}
    for name in expected:  # the checkpoint list has a second label, step
        assert f'{name}{{run="metrics-run"' in text, name
    assert _sample(text, "qwenft_train_total_steps") == 200
    assert _sample(text, "qwenft_train_tokens_total") > 0
    assert _sample(text, "qwenft_train_tokens_per_second") > 0
    assert _sample(text, "qwenft_train_eta_seconds") > 0


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts ranks in new sessions)."""
    import psutil

    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=60)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{run="metrics-run"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


def _step(text: str) -> float:
    try:
        return _sample(text, "qwenft_train_step")
    except AssertionError:
        return 0.0


def test_reference_run_output_is_json_lines(
    runs: dict[str, str], workdir: Path, tiny_model_dir: Path
) -> None:
    stdout = train_mode(runs, workdir, tiny_model_dir, "ddp")
    kinds = {e["event"] for e in events(stdout)}
    assert {"train_start", "train_log", "checkpoint", "train_end", "rank_end"} <= kinds
    assert all(json.loads(json.dumps(e)) == e for e in events(stdout))
