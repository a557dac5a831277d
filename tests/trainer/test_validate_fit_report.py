"""The validator's report of the model's shape, which the operator's GPU-fit check reads.

Covers: ``qwenft data validate --json`` carries ``base_config``, the shape fields of the
model's config.json, which size the model exactly as transformers does; a report that
passed is written, compact, to the termination log (when that file exists, as it does in a
pod) and the operator reads the same shape back from it; a failed report leaves the
termination log alone (the pod's log tail is its message then).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenft_operator import gpu_fit
from qwenft_operator.cli import main as qwenft
from qwenft_trainer import validate
from qwenft_trainer.model_shapes import ModelShape

DATA = Path(__file__).parent / "data"


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "termination-log"
    log.write_text("", encoding="utf-8")
    monkeypatch.setattr(validate, "TERMINATION_LOG", str(log))
    return log


def test_report_carries_the_model_shape(
    tiny_model_dir: Path, termination_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    args = ["data", "validate", str(DATA / "mixed.jsonl"), "--model", str(tiny_model_dir)]
    assert qwenft([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    real = sum(p.numel() for p in model.parameters())
    assert ModelShape.from_config(report["base_config"]).parameters() == real

    written = termination_log.read_text(encoding="utf-8")
    assert len(written.encode()) < 4096
    assert json.loads(written)["ok"] is True
    assert gpu_fit.reported_model_config(written) == report["base_config"]


def test_failed_report_leaves_the_termination_log_alone(
    tiny_model_dir: Path, termination_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "validate", str(DATA / "bad" / "wrong_type.jsonl"), "--model"]
    assert qwenft([*args, str(tiny_model_dir), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert termination_log.read_text(encoding="utf-8") == ""
