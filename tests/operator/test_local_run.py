"""``qwenft run MANIFEST --local`` (qwenft_operator.local).

Covers: the shipped examples/quickstart-local.yaml end to end on the CPU (tiny model built
on first use, validation, training with checkpoints, merge with a passing verification,
the server answering the evaluation prompt), with the phases printed in order; the same
manifest with ``--arch qwen3_5`` (the multimodal tiny model in its own directory, merged
into a complete Qwen3.5 checkpoint and served); ``--arch`` refused for a model that is not
the tiny one, and the per-architecture model and output paths; manifests
that can't run locally (a claim, several nodes) refused with the field named; ``qwenft run``
without ``--local`` refused; builder command lines turned into local commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qwenft_operator import local_procs
from qwenft_operator.local import (
    LocalRunError,
    build_local_train_command,
    main,
    tiny_model_arch,
    with_tiny_arch,
)
from qwenft_operator.parsed_run import Run
from qwenft_operator.spec import load_manifest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart-local.yaml"


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    # The manifest's relative paths resolve from the working directory, as from the repo root.
    (tmp_path / "trainer").symlink_to(REPO / "trainer")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "qwenft_operator.cli", "run", str(QUICKSTART), "--local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    phases = [line.split(":")[0] for line in out.splitlines() if line.startswith("==> ")]
    assert phases == ["==> Validating", "==> Training", "==> Merging", "==> Deploying", "==> Ready"]
    assert "54 dialogues" in out
    assert "building the tiny Qwen2 model" in out
    assert "user:      Hello! What can you help me with?" in out
    assert "assistant: " in out
    assert "smoke test: passed (1 prompt(s))" in out

    manifest = yaml.safe_load(QUICKSTART.read_text())
    output = tmp_path / manifest["spec"]["output"]["path"]
    assert (output / "adapter_config.json").is_file()
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == manifest["spec"]["training"]["maxSteps"]
    report = json.loads((output / "merged" / "merge_report.json").read_text())
    assert report["passed"] is True
    assert (output / "logs" / "train.log").stat().st_size > 0
    assert "ready in" in (output / "logs" / "serve.log").read_text()


@pytest.mark.slow
def test_quickstart_runs_on_the_tiny_multimodal_qwen3_5(tmp_path: Path) -> None:
    (tmp_path / "trainer").symlink_to(REPO / "trainer")
    raw = yaml.safe_load(QUICKSTART.read_text())
    # A short run; Gated DeltaNet layers can't be packed exactly on the CPU.
    raw["spec"]["training"].update(maxSteps=3, packing=False)
    raw["spec"]["checkpoint"]["saveSteps"] = 3
    manifest = tmp_path / "quickstart.yaml"
    manifest.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "qwenft_operator.cli", "run", str(manifest), "--local",
         "--arch", "qwen3_5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    phases = [line.split(":")[0] for line in out.splitlines() if line.startswith("==> ")]
    assert phases == ["==> Validating", "==> Training", "==> Merging", "==> Deploying", "==> Ready"]
    model_dir = tmp_path / ".qwenft" / "tiny-qwen-qwen3_5"
    assert "building the tiny qwen3_5 model in .qwenft/tiny-qwen-qwen3_5" in out
    assert "smoke test: passed (1 prompt(s))" in out
    assert not (tmp_path / ".qwenft" / "tiny-qwen").exists()

    output = tmp_path / ".qwenft" / "runs" / "quickstart-qwen3_5"
    assert json.loads((output / "summary.json").read_text())["steps"] == 3
    merged_dir = output / "merged"
    merged = json.loads((merged_dir / "config.json").read_text())
    assert merged["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert "vision_config" in merged
    assert json.loads((merged_dir / "merge_report.json").read_text())["passed"] is True
    from safetensors.torch import load_file

    base, tuned = (
        load_file(model_dir / "model.safetensors"),
        load_file(merged_dir / "model.safetensors"),
    )
    assert tuned.keys() == base.keys()
    vision = [key for key in base if key.startswith("model.visual.")]
    assert vision and all(tuned[key].equal(base[key]) for key in vision)


def test_arch_gets_its_own_tiny_model_and_output(tmp_path: Path) -> None:
    spec = load_manifest(QUICKSTART).spec
    run = Run("quickstart", "local", "local", spec)
    moe = with_tiny_arch(run, "qwen3_moe")
    assert moe.spec.model.path == ".qwenft/tiny-qwen-qwen3_moe"
    assert moe.spec.output.path == ".qwenft/runs/quickstart-qwen3_moe"
    assert moe.spec.training == spec.training and moe.name == run.name
    assert with_tiny_arch(run, "qwen2") is run
    assert [tiny_model_arch(p) for p in ("a/tiny-qwen", "tiny-qwen-qwen3", "tiny-qwen-x")] == [
        "qwen2",
        "qwen3",
        None,
    ]
    hub = spec.model_copy(update={"model": spec.model.model_copy(update={"path": "/models/q"})})
    with pytest.raises(LocalRunError, match=r"spec\.model\.path is /models/q"):
        with_tiny_arch(Run("quickstart", "local", "local", hub), "qwen3")


def _manifest(tmp_path: Path, **spec_changes: object) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["spec"].update(spec_changes)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cluster_only_settings_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(
        tmp_path,
        model={"pvc": {"claimName": "models", "path": "qwen"}},
        resources={"nodes": 2, "gpusPerNode": 1},
    )
    assert main([str(manifest), "--local"]) == 1
    err = capsys.readouterr().err
    assert "==> Failed" in err
    assert "spec.model.pvc" in err
    assert "spec.resources.nodes is 2" in err


def test_invalid_manifest_and_missing_local_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(QUICKSTART)]) == 2
    assert "needs --local" in capsys.readouterr().err
    bad = _manifest(tmp_path, method="dpo")
    assert main([str(bad), "--local"]) == 1
    assert "method" in capsys.readouterr().err


def test_builder_command_lines_run_with_this_python() -> None:
    command = local_procs.qwenft_command(["qwenft", "merge", "--adapter", "a"])
    assert command == [sys.executable, "-m", "qwenft_operator.cli", "merge", "--adapter", "a"]
    with pytest.raises(ValueError):
        local_procs.qwenft_command(["vllm", "serve"])


@pytest.mark.parametrize(("gpus", "launcher"), [(0, False), (1, False), (4, True)])
def test_train_command_uses_torchrun_for_several_processes(
    tmp_path: Path, gpus: int, launcher: bool
) -> None:
    manifest = _manifest(tmp_path, resources={"nodes": 1, "gpusPerNode": gpus})
    spec = load_manifest(manifest).spec
    command = build_local_train_command(Run("r", "local", "u", spec), tmp_path / "train.yaml")
    assert command[0] == sys.executable
    assert command[-4:] == ["-m", "qwenft_trainer.train", "--config", str(tmp_path / "train.yaml")]
    if launcher:
        assert command[1:7] == [
            "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus), "-m",
        ]  # fmt: skip
    else:
        assert len(command) == 5
