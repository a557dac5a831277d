"""Training on a CUDA GPU (skipped without one): what the CPU tests can't show.

Covers: Q-LoRA with bitsandbytes' CUDA 4-bit kernels and bf16 on the GPU, reporting peak
GPU memory in ``summary.json`` and the GPU memory series on the metrics endpoint;
DeepSpeed ZeRO-2 under torchrun over NCCL on one GPU producing a loadable adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from trainrun import events, free_port, poll, run, torchrun, train_env, write_config
from trainrun import write_dialogues as make_data

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_qlora_on_cuda_reports_gpu_memory(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "qlora.yaml",
        tiny_model_dir,
        make_data(tmp_path / "train.jsonl"),
        tmp_path / "out",
        method="qlora",
        training={"max_steps": 300, "precision": "bf16", "gradient_checkpointing": True},
        metrics_port=port,
        run_name="gpu-run",
    )
    cmd = [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config)]
    proc = subprocess.Popen(cmd, env=train_env(), stdout=subprocess.PIPE, text=True)

    def scrape() -> str | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        except OSError:
            return None
        body = text.decode()
        return body if "qwenft_train_gpu_memory_allocated_bytes" in body else None

    body = poll(scrape, timeout=300, what="GPU memory series")
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    assert 'qwenft_train_gpu_memory_reserved_bytes{run="gpu-run"}' in body
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["peak_gpu_memory_bytes"] > 0
    assert events(stdout, "train_end")[0]["steps"] == 300


def test_zero2_over_nccl(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "z2.yaml",
        tiny_model_dir,
        make_data(tmp_path / "train.jsonl"),
        tmp_path / "out",
        deepspeed={"enabled": True, "zero_stage": 2},
        training={"max_steps": 4, "precision": "bf16"},
    )
    result = run(torchrun(1, config))
    assert events(result.stdout, "train_end")[0]["steps"] == 4
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
