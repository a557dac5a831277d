"""The command lines the builders put in pods, run against the real trainer programs.

A pod only ever runs what a builder wrote, so this runs those exact argument lists
(``qwenft`` replaced by ``python -m qwenft_operator.cli``) on the tiny model, with the
spec's locations as plain local paths: the validation Job's validator, the trainer on the
rendered config, the merge Job's merge, and the server on the merged model (ready, and
answering under the served model name). Covers: flags the programs accept, the rendered
config trains, and the output layout the builders assume (adapter in the output directory,
merged model in ``merged/``).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from qwenft_operator.builders import config, merge, serving, validation
from qwenft_operator.runs import Run
from qwenft_trainer.config import dump_config
from support import free_port, poll

ROOT = Path(__file__).parents[2]
DATASET = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
CLI = [sys.executable, "-m", "qwenft_operator.cli"]

pytestmark = pytest.mark.slow


def local_run(tiny_model_dir: Path, out: Path) -> Run:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart-local.yaml").read_text())
    spec = manifest["spec"]
    spec["model"] = {"path": str(tiny_model_dir)}
    spec["dataset"]["path"] = str(DATASET)
    spec["output"] = {"path": str(out)}
    spec["training"].update(maxSteps=2, maxSeqLength=128)
    spec["checkpoint"] = {"saveSteps": 2, "keep": 1}
    spec["evaluation"] = {"fraction": 0.1, "steps": 2}
    return Run.from_body(manifest)


def run_cli(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "qwenft"
    return subprocess.run(
        [*CLI, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_pod_commands_run_the_trainer_programs(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = local_run(tiny_model_dir, out)

    checked = run_cli(validation.build_validation_args(run))
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert '"ok": true' in checked.stdout

    config_file = tmp_path / "train.yaml"
    config_file.write_text(dump_config(config.build_train_config(run)), encoding="utf-8")
    trained = subprocess.run(
        [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config_file),
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (out / "adapter_config.json").exists(), "the adapter is in the output directory"
    assert (out / "checkpoint-2").is_dir()

    merged = run_cli(merge.build_merge_args(run), timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (out / "merged" / "config.json").exists()

    target = serving.build_serve_target(run)
    assert target == serving.ServeTarget(model=str(out / "merged"))
    argv = serving.build_builtin_args(run, target)
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    server = subprocess.Popen(
        [*CLI, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                return bool(response.status == 200)

        poll(ready, timeout=120, what="the server on /readyz", interval=0.5, retry_on=(OSError,))
        with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as models:
            assert f'"id":"{run.served_model_name}"' in models.read().decode().replace(" ", "")
    finally:
        server.terminate()
        server.wait(timeout=30)
