"""The command lines the builders put in pods, run against the real trainer programs.

A pod only ever runs what a builder wrote, so this runs those exact argument lists
(``qwenft`` replaced by ``python -m qwenft_operator.cli``) on the tiny model, with the
spec's locations as plain local paths: the validation Job's validator, the trainer on the
rendered config, the merge Job's merge, and the server on the merged model (ready, and
answering under the served model name). Covers: flags the programs accept, the rendered
config trains, and the output layout the builders assume (adapter in the output directory,
merged model in ``merged/``), the token cache the validator writes for the rendered
config, which training loads, and a server started on a chosen checkpoint (refused with
the kept ones listed when it isn't kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from qwenft_operator.builders import config, merge, serving, validation
from qwenft_operator.parsed_run import Run
from qwenft_trainer.config import dump_config
from support import free_port, poll

ROOT = Path(__file__).parents[2]
DATASET = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
CLI = [sys.executable, "-m", "qwenft_operator.cli"]

pytestmark = pytest.mark.slow


def local_run(tiny_model_dir: Path, out: Path, **sections: dict[str, object]) -> Run:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart-local.yaml").read_text())
    spec = manifest["spec"]
    for name, fields in sections.items():
        spec.setdefault(name, {}).update(fields)
    spec["model"] = {"path": str(tiny_model_dir)}
    spec["dataset"]["path"] = str(DATASET)
    spec["output"] = {"path": str(out)}
    spec["training"].update(maxSteps=2, maxSeqLength=128)
    spec["checkpoint"] = {"saveSteps": 2, "keep": 1}
    spec["evaluation"] = {"fraction": 0.1, "steps": 2}
    return Run.from_body(manifest)


def run_cli(
    argv: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "qwenft"
    return subprocess.run(
        [*CLI, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_pod_commands_run_the_trainer_programs(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = local_run(tiny_model_dir, out)

    # the validation Job's container env: the rendered config whose token cache it writes
    job = validation.build_validation_job(run)
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    cache_env = {validation.TRAIN_CONFIG_ENV: env[validation.TRAIN_CONFIG_ENV]}
    checked = run_cli(validation.build_validation_args(run), env=cache_env)
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
    summary = json.loads((out / "summary.json").read_text())
    assert summary["token_cache"]["status"] == "loaded", "the validator tokenized for it"
    assert (out / "checkpoint-2").is_dir()

    merged = run_cli(merge.build_merge_args(run), timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (out / "merged" / "config.json").exists()

    target = serving.build_serve_target(run)
    assert target == serving.ServeTarget(model=str(out / "merged"))
    models = serve_models(serving.build_builtin_args(run, target))
    assert f'"id":"{run.served_model_name}"' in models

    # spec.inference.checkpoint, unmerged: the server resolves it to checkpoint-2's adapter
    chosen = local_run(tiny_model_dir, out, inference={"checkpoint": 2}, merge={"enabled": False})
    target = serving.build_serve_target(chosen)
    assert (target.adapter, target.checkpoint) == (str(out), "2")
    assert f'"id":"{chosen.served_model_name}"' in serve_models(
        serving.build_builtin_args(chosen, target)
    )
    missing = local_run(tiny_model_dir, out, inference={"checkpoint": 3}, merge={"enabled": False})
    refused = run_cli(serving.build_builtin_args(missing, serving.build_serve_target(missing)))
    assert refused.returncode == serving.CHECKPOINT_NOT_FOUND_EXIT_CODE
    assert "checkpoint 3 doesn't exist" in refused.stderr
    assert "kept checkpoints: 2" in refused.stderr


def serve_models(argv: list[str]) -> str:
    """Start the server of ``argv`` on a free local port; its /v1/models once it is ready."""
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
            return str(models.read().decode().replace(" ", ""))
    finally:
        server.terminate()
        server.wait(timeout=30)
