"""Trainer telemetry: Prometheus series, JSON log lines, throughput and ETA.

Covers: the exported series names are exactly the trainer table of docs/metrics.md (GPU
memory only with CUDA) and every sample carries ``run``; the callback turns Trainer logs
into gauge values, a counter of tokens and one parseable ``train_log`` line per logging
step (and ``eval`` lines); the last-checkpoint gauge moves only to a checkpoint carrying
the complete marker (and starts at the resumed step); one series per complete checkpoint on
disk, dropped when pruned, listed again after a restart; rates and ETA from
``build_step_rates``; non-finite values become null; the ``/metrics`` endpoint serves over
HTTP. The endpoint during a real run
is covered in test_train_distributed.py.
"""

from __future__ import annotations

import io
import json
import math
import re
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest
from qwenft_trainer.checkpoints import mark_complete
from qwenft_trainer.telemetry import (
    TelemetryCallback,
    TrainMetrics,
    build_log_record,
    build_step_rates,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented_trainer_series() -> set[str]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Trainer", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(qwenft_train_[a-z_]+)`", section, flags=re.M))


def exported_series(metrics: TrainMetrics) -> dict[str, dict[str, str]]:
    """series name -> labels, from the text exposition format."""
    series: dict[str, dict[str, str]] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("#") or not line:
            continue
        name, labels = re.match(r"^([a-z_]+)\{(.*)\}", line).groups()  # type: ignore[union-attr]
        if name.endswith("_created"):
            continue
        series[name] = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    return series


def test_series_names_match_docs_and_carry_run_label() -> None:
    documented = documented_trainer_series()
    assert len(documented) == 15
    with_gpu = _every_gauge_set(TrainMetrics(run="r1", cuda=True))
    series = exported_series(with_gpu)
    assert set(series) == documented
    assert series.pop("qwenft_train_checkpoint_time_seconds") == {"run": "r1", "step": "4"}
    assert all(labels == {"run": "r1"} for labels in series.values())
    without_gpu = _every_gauge_set(TrainMetrics(run="r1", cuda=False))
    assert set(exported_series(without_gpu)) == {n for n in documented if "gpu_memory" not in n}


def _every_gauge_set(metrics: TrainMetrics) -> TrainMetrics:
    for name in metrics.families:
        metrics.set(name, 1.0)
    metrics.set_checkpoints({4: 1.0})
    return metrics


def test_series_appear_on_first_value_and_nan_loss_is_exported() -> None:
    metrics = TrainMetrics(run="r", cuda=False)
    # before the first logging step there is no loss at all, rather than a loss of 0
    assert metrics.registry.get_sample_value("qwenft_train_loss", {"run": "r"}) is None
    assert metrics.registry.get_sample_value("qwenft_train_resumed_from_step", {"run": "r"}) == 0
    metrics.set("qwenft_train_loss", float("nan"))
    value = metrics.registry.get_sample_value("qwenft_train_loss", {"run": "r"})
    assert value is not None and math.isnan(value)


def _value(metrics: TrainMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"run": "r"})
    assert value is not None, name
    return value


def test_callback_feeds_metrics_and_json_lines() -> None:
    metrics = TrainMetrics(run="r", cuda=False)
    out = io.StringIO()
    callback = TelemetryCallback(
        metrics, samples_per_step=8, resumed_from_step=4, progress_bar=False, stream=out
    )
    state = SimpleNamespace(
        is_world_process_zero=True,
        global_step=4,
        max_steps=20,
        epoch=0.2,
        num_input_tokens_seen=1000,
    )
    args, control = SimpleNamespace(output_dir="/o"), SimpleNamespace()
    callback.on_train_begin(args, state, control)  # type: ignore[arg-type]
    state.global_step, state.epoch, state.num_input_tokens_seen = 6, 0.3, 3000
    callback.on_log(args, state, control, logs={"loss": 2.5, "learning_rate": 1e-4})  # type: ignore[arg-type]
    callback.on_log(args, state, control, logs={"eval_loss": 2.75})  # type: ignore[arg-type]

    assert _value(metrics, "qwenft_train_step") == 6
    assert _value(metrics, "qwenft_train_total_steps") == 20
    assert _value(metrics, "qwenft_train_loss") == 2.5
    assert _value(metrics, "qwenft_train_eval_loss") == 2.75
    assert _value(metrics, "qwenft_train_learning_rate") == 1e-4
    assert _value(metrics, "qwenft_train_resumed_from_step") == 4
    assert _value(metrics, "qwenft_train_tokens_total") == 3000
    assert _value(metrics, "qwenft_train_tokens_per_second") > 0
    assert _value(metrics, "qwenft_train_eta_seconds") > 0

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["train_log", "eval"]
    log = lines[0]
    assert {k: log[k] for k in ("step", "total_steps", "epoch", "loss", "learning_rate")} == {
        "step": 6,
        "total_steps": 20,
        "epoch": 0.3,
        "loss": 2.5,
        "learning_rate": 1e-4,
    }
    assert log["tokens_total"] == 3000
    assert log["tokens_per_second"] > 0 and log["eta_seconds"] > 0
    assert lines[1] == {"event": "eval", "step": 6, "epoch": 0.3, "eval_loss": 2.75}


def test_checkpoint_gauge_follows_complete_checkpoints(tmp_path: Path) -> None:
    metrics = TrainMetrics(run="r", cuda=False)
    out = io.StringIO()
    callback = TelemetryCallback(
        metrics, samples_per_step=1, resumed_from_step=2, progress_bar=False, stream=out
    )
    state = SimpleNamespace(
        is_world_process_zero=True, global_step=2, max_steps=9, epoch=0.1, num_input_tokens_seen=0
    )
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace()
    callback.on_train_begin(args, state, control)  # type: ignore[arg-type]
    assert _value(metrics, "qwenft_train_last_checkpoint_step") == 2
    for step, complete in ((4, True), (6, False)):
        state.global_step = step
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        if complete:
            mark_complete(directory, step=step)
        callback.on_save(args, state, control)  # type: ignore[arg-type]
    assert _value(metrics, "qwenft_train_last_checkpoint_step") == 4  # 6 has no marker
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line["step"]) for line in lines] == [
        ("checkpoint", 4),
        ("checkpoint", 6),
    ]


def test_fresh_run_has_no_checkpoint_series(tmp_path: Path) -> None:
    metrics = TrainMetrics(run="r", cuda=False)
    callback = TelemetryCallback(metrics, samples_per_step=1, progress_bar=False)
    state = SimpleNamespace(
        is_world_process_zero=True, global_step=0, max_steps=9, epoch=0.0, num_input_tokens_seen=0
    )
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_train_begin(args, state, SimpleNamespace())  # type: ignore[arg-type]
    sample = metrics.registry.get_sample_value("qwenft_train_last_checkpoint_step", {"run": "r"})
    assert sample is None
    assert on_disk(metrics) == {}  # listed: none on disk
    assert (
        "# TYPE qwenft_train_checkpoint_time_seconds gauge"
        in generate_latest(metrics.registry).decode()
    )


def on_disk(metrics: TrainMetrics) -> dict[int, float]:
    """The checkpoint series: step -> value."""
    return {
        int(sample.labels["step"]): sample.value
        for family in metrics.registry.collect()
        if family.name == "qwenft_train_checkpoint_time_seconds"
        for sample in family.samples
    }


def test_checkpoint_series_mirror_the_complete_checkpoints_on_disk(tmp_path: Path) -> None:
    """Pruned checkpoints drop out; half-written ones never appear; a restart lists the disk."""
    from qwenft_trainer.checkpoints import CheckpointCallback

    metrics = TrainMetrics(run="r", cuda=False)
    assert on_disk(metrics) == {}
    assert "checkpoint_time" not in generate_latest(metrics.registry).decode()  # not listed yet
    pruner = CheckpointCallback(keep=2)
    callback = TelemetryCallback(
        metrics, samples_per_step=1, progress_bar=False, stream=io.StringIO()
    )
    state = SimpleNamespace(
        is_world_process_zero=True,
        global_step=0,
        max_steps=9,
        epoch=0.0,
        num_input_tokens_seen=0,
        log_history=[],  # no evaluation: no best checkpoint is kept beyond keep
    )
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace()
    callback.on_train_begin(args, state, control)  # type: ignore[arg-type]
    for step in (2, 4, 6):
        state.global_step = step
        (tmp_path / f"checkpoint-{step}").mkdir()
        pruner.on_save(args, state, control)  # type: ignore[arg-type]
        callback.on_save(args, state, control)  # type: ignore[arg-type]
    (tmp_path / "checkpoint-8").mkdir()  # being written: no marker yet
    written = on_disk(metrics)
    assert sorted(written) == [4, 6]  # keep=2 pruned checkpoint-2
    marker = tmp_path / "checkpoint-6" / "qwenft-complete"
    assert written[6] == marker.stat().st_mtime

    restarted = TrainMetrics(run="r", cuda=False)
    again = TelemetryCallback(
        restarted, samples_per_step=1, progress_bar=False, stream=io.StringIO()
    )
    again.on_train_begin(args, state, control)  # type: ignore[arg-type]
    assert on_disk(restarted) == written


def test_callback_is_silent_on_other_ranks() -> None:
    out = io.StringIO()
    callback = TelemetryCallback(None, samples_per_step=1, progress_bar=False, stream=out)
    state = SimpleNamespace(is_world_process_zero=False, global_step=1, max_steps=2, epoch=0.5)
    callback.on_log(SimpleNamespace(), state, SimpleNamespace(), logs={"loss": 1.0})  # type: ignore[arg-type]
    assert out.getvalue() == ""


def test_progress_rates_and_eta() -> None:
    progress = build_step_rates(
        steps=2,
        tokens=4000,
        seconds=2.0,
        samples_per_step=16,
        steps_left=30,
        session_steps=10,
        session_seconds=20.0,
    )
    assert progress.tokens_per_second == 2000
    assert progress.samples_per_second == 16
    assert progress.eta_seconds == 60
    assert (
        build_step_rates(
            steps=0,
            tokens=0,
            seconds=0.0,
            samples_per_step=1,
            steps_left=5,
            session_steps=0,
            session_seconds=0.0,
        ).eta_seconds
        == 0
    )


def test_log_record_rounds_and_nulls_non_finite() -> None:
    line = json.loads(build_log_record("train_log", loss=float("nan"), lr=1.23456789e-5, step=3))
    assert line == {"event": "train_log", "loss": None, "lr": 1.2e-05, "step": 3}


def test_endpoint_serves_the_series_over_http() -> None:
    from support import free_port

    metrics = TrainMetrics(run="http-run", cuda=False)
    metrics.set("qwenft_train_loss", 1.5)
    port = free_port()
    assert metrics.serve(port, addr="127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'qwenft_train_loss{run="http-run"} 1.5' in body
    assert 'qwenft_train_tokens_total{run="http-run"}' in body
    # a second endpoint on the same port fails softly: training goes on without it
    assert not TrainMetrics(run="other", cuda=False).serve(port, addr="127.0.0.1")
