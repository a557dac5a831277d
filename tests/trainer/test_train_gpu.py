"""Training on a CUDA GPU (skipped without one): what the CPU tests can't show.

Covers: Q-LoRA with bitsandbytes' CUDA 4-bit kernels and bf16 on the GPU, reporting peak
GPU memory in ``summary.json`` and the GPU memory series on the metrics endpoint;
DeepSpeed ZeRO-2 under torchrun over NCCL on one GPU producing a loadable adapter; one LoRA
step on CUDA packed under flex_attention (the ``auto`` choice, in the log, ``train_start``
and ``summary.json``) gives the loss and grad norm of the same step unpacked, to 1e-3
relative (fp32; the two layouts sum in different orders on the GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import free_port, poll
from trainrun import events, run, torchrun, train_env, write_config
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


def test_one_packed_step_on_cuda_runs_flex_attention_and_matches_unpacked(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = make_data(tmp_path / "train.jsonl", count=24)

    def one_step(packing: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        name = "packed" if packing else "unpacked"
        config = write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            data,
            tmp_path / name,
            training={"max_steps": 1, "per_device_batch_size": 32, "packing": packing},
        )
        result = run([sys.executable, "-m", "qwenft_trainer.train", "--config", str(config)])
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        (step,) = events(result.stdout, "train_log")
        return summary, events(result.stdout, "train_start")[0], step

    packed, start, on = one_step(True)
    unpacked, _, off = one_step(False)
    assert packed["attention"] == "flex_attention", packed["attention_reason"]
    assert (start["attention"], start["attention_reason"]) == (
        packed["attention"],
        packed["attention_reason"],
    )
    assert packed["packing"] == "padded_rows", packed["packing_reason"]
    assert "start-up probe: packed = separate logits" in packed["packing_reason"]
    assert unpacked["attention"] == "flex_attention"
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-3)
    assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-3)
