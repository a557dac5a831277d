"""LoRA training end to end in one process, on the tiny model (CPU, fp32 unless noted).

Covers: loss falls (mean of the last steps below the first); the frozen base weights
are bit-identical after training while every adapter matrix moved; the saved adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) reloads with peft and gives the
trained model's logits; the tokenizer and ``summary.json`` are saved; eval loss on a
held-out share every N steps and at the end; one JSON log line
per step and the start/end events; the termination log written where the file exists;
complete checkpoints kept (K) with markers; a half-written newer checkpoint ignored and
removed when the run resumes from the newest complete one; a restart after the final
checkpoint exporting it instead of training a step past the end; bf16 LoRA on the CPU; a bad
dataset stopping with the validator's message and exit code 1 before any model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from qwenft_trainer.checkpoints import MARKER, list_checkpoints
from trainrun import InProcessRun, events, write_config, write_dialogues

pytestmark = pytest.mark.slow

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora")
    write_dialogues(path / "train.jsonl")
    return path


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, workdir: Path) -> InProcessRun:
    (workdir / "termination-log").write_text("")
    config = write_config(
        workdir / "lora.yaml",
        tiny_model_dir,
        workdir / "train.jsonl",
        workdir / "out",
        lora={"r": 16, "alpha": 32},
        training={"max_steps": 10, "learning_rate": 0.02},
        checkpoint={"save_steps": 4, "keep": 2},
        evaluation={"fraction": 0.125, "steps": 5},
        run_name="lora-test",
        termination_log=str(workdir / "termination-log"),
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    return run


def test_loss_falls(lora_run: InProcessRun) -> None:
    losses = lora_run.losses()
    assert len(losses) == 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, losses


def test_base_frozen_and_adapter_moved(lora_run: InProcessRun) -> None:
    adapters = base = 0
    for name, param in lora_run.model.named_parameters():
        before = lora_run.initial[name]
        if "lora_" in name:
            adapters += 1
            assert not torch.equal(param, before), f"adapter weight {name} did not move"
        else:
            base += 1
            assert torch.equal(param, before), f"base weight {name} changed"
            assert not param.requires_grad
    assert adapters == 2 * 7 * 2  # A and B for 7 projections in 2 layers
    assert base > 0


def test_adapter_reloads_with_peft_and_gives_same_logits(
    lora_run: InProcessRun, tiny_model_dir: Path, workdir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = workdir / "out"
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    trained = lora_run.model.eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_summary_log_lines_and_termination_log(lora_run: InProcessRun, workdir: Path) -> None:
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 10
    assert summary["output"] == "adapter"
    assert summary["resumed_from_step"] == 0
    assert summary["trained_tokens"] > 0 and summary["tokens_per_second"] > 0
    assert summary["train_loss"] == pytest.approx(lora_run.losses()[-1], abs=1e-5)
    assert summary["peak_host_memory_bytes"] > 0
    assert summary["peak_gpu_memory_bytes"] is None
    start = events(lora_run.stdout, "train_start")[0]
    assert start["effective_batch_size"] == 2 and start["world_size"] == 1
    steps = [e["step"] for e in events(lora_run.stdout, "train_log")]
    assert steps == list(range(1, 11))
    first = events(lora_run.stdout, "train_log")[0]
    for key in ("total_steps", "epoch", "loss", "learning_rate", "tokens_per_second"):
        assert first[key] is not None, key
    evals = events(lora_run.stdout, "eval")
    assert [e["step"] for e in evals] == [5, 10, 10]  # every 5 steps, then the final one
    assert summary["eval_loss"] == pytest.approx(evals[-1]["eval_loss"])
    termination = json.loads((workdir / "termination-log").read_text())
    assert termination["status"] == "succeeded" and termination["steps"] == 10
    assert len((workdir / "termination-log").read_bytes()) < 4096


def test_keeps_k_complete_checkpoints(lora_run: InProcessRun, workdir: Path) -> None:
    found = list_checkpoints(workdir / "out")
    assert [(c.step, c.complete) for c in found] == [(8, True), (10, True)]
    assert (found[-1].path / "optimizer.pt").is_file()


def test_half_written_checkpoint_is_ignored_on_resume(
    lora_run: InProcessRun, workdir: Path
) -> None:
    resumed = workdir / "resumed"
    shutil.copytree(workdir / "out", resumed / "out")
    broken = resumed / "out" / "checkpoint-11"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"half written")
    assert not (broken / MARKER).exists()
    run = InProcessRun(
        workdir / "lora.yaml", "--output-dir", str(resumed / "out"), "--max-steps", "12"
    )
    assert run.code == 0, run.stderr[-3000:]
    assert events(run.stdout, "train_start")[0]["resumed_from_step"] == 10
    assert [e["step"] for e in events(run.stdout, "train_log")] == [11, 12]
    summary = json.loads((resumed / "out" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 12
    assert [(c.step, c.complete) for c in list_checkpoints(resumed / "out")] == [
        (10, True),
        (12, True),
    ]


def test_bf16_lora_trains_on_cpu(tiny_model_dir: Path, workdir: Path) -> None:
    config = write_config(
        workdir / "bf16.yaml",
        tiny_model_dir,
        workdir / "train.jsonl",
        workdir / "bf16",
        training={"max_steps": 3, "precision": "bf16", "gradient_checkpointing": True},
    )
    run = InProcessRun(config)
    assert run.code == 0, run.stderr[-3000:]
    assert len(run.losses()) == 3
    assert all(loss == loss and loss < 20 for loss in run.losses())
    frozen = next(p for n, p in run.model.named_parameters() if "base_layer" in n)
    assert frozen.dtype == torch.bfloat16
    assert (workdir / "bf16" / "adapter_model.safetensors").is_file()


def test_bad_dataset_exits_before_the_model_loads(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qwenft_trainer.train import main
    from transformers import AutoModelForCausalLM

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although the dataset is bad")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
    termination = tmp_path / "termination-log"
    termination.write_text("")
    config = write_config(
        tmp_path / "bad.yaml",
        tiny_model_dir,
        DATA_DIR / "bad" / "no_assistant.jsonl",
        tmp_path / "out",
        termination_log=str(termination),
    )
    assert main(["--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "FAILED:" in captured.err and "no assistant turn" in captured.err
    assert events(captured.out, "train_failed")[0]["reason"] == "InvalidDataset"
    message = json.loads(termination.read_text())
    assert message["status"] == "failed" and message["reason"] == "InvalidDataset"
    assert not (tmp_path / "out").exists()


def test_restart_after_the_final_checkpoint_exports_it_without_training(
    lora_run: InProcessRun, workdir: Path
) -> None:
    finished = workdir / "finished" / "out"
    shutil.copytree(workdir / "out", finished)
    for name in ("summary.json", "adapter_model.safetensors", "adapter_config.json"):
        (finished / name).unlink()
    run = InProcessRun(workdir / "lora.yaml", "--output-dir", str(finished))
    assert run.code == 0, run.stderr[-3000:]
    assert events(run.stdout, "train_log") == []
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["resumed_from_step"] == summary["steps"] == 10
    assert (finished / "adapter_model.safetensors").read_bytes() == (
        finished / "checkpoint-10" / "adapter_model.safetensors"
    ).read_bytes()
