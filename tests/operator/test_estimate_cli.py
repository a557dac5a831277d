"""``qwenft estimate MANIFEST``: the GPU-fit estimate without a cluster.

Covers: the breakdown of a shipped example from the known hub shape (exit 0); a verdict
with --gpu-memory: fits (0), can't fit (1) naming the fixes; a model on a PVC needs
--model-config (2, naming the option) and is sized from it; a CPU run; ``--help`` shows an
example; the ``qwenft`` dispatcher lists the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenft_operator.cli import main as qwenft
from qwenft_operator.cli import usage
from qwenft_trainer.model_shapes import known_config

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_prints_the_breakdown_of_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert qwenft(["estimate", str(EXAMPLES / "lora-single-gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "qwen2, 28 layers, hidden 3584" in out
    for part in ("weights", "adapter", "activations", "logits", "total"):
        assert f"  {part}" in out


def test_verdict_with_gpu_memory(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLES / "lora-single-gpu.yaml")
    assert qwenft(["estimate", example, "--gpu-memory", "80Gi"]) == 0
    assert "fits: needs" in capsys.readouterr().out
    assert qwenft(["estimate", example, "--gpu-memory", "16Gi"]) == 1
    out = capsys.readouterr().out
    assert "too-large: needs" in out and "method: qlora" in out


def test_model_on_a_pvc_needs_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = str(EXAMPLES / "full-finetune.yaml")
    assert qwenft(["estimate", example]) == 2
    assert "--model-config" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps(known_config("Qwen/Qwen2.5-1.5B")), encoding="utf-8")
    assert qwenft(["estimate", example, "--model-config", str(config)]) == 0
    assert "1.54B parameters" in capsys.readouterr().out


def test_cpu_run_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert qwenft(["estimate", str(EXAMPLES / "quickstart-local.yaml")]) == 0
    assert "trains on the CPU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        qwenft(["estimate", "--help"])
    assert "example: qwenft estimate" in capsys.readouterr().out
    assert "estimate" in usage()
