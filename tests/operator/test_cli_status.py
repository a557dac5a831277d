"""``qwenft status``: the formatting of a run's status, and ``--watch``'s loop.

Covers: the progress bar (share, clamping, width); durations; a Training run's phase, bar,
loss and eval loss, learning rate, tokens/s, ETA, newest checkpoint and start time; a
Ready run's endpoint, outputs and conditions table (selected by type, every condition
shown with its age); a run the operator hasn't seen (no status) and a spec change it hasn't
acted on yet; --watch prints once per resourceVersion and stops when the run is Ready or
gone; --help shows an example. The API reading is run against a real API server in
tests/e2e/test_cli_commands.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from qwenft_operator import cli
from qwenft_operator.cli_status import format_duration, format_status, progress_bar, watch

NOW = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)


def cond(type_: str, status: str, reason: str, message: str, minutes_ago: int) -> dict[str, Any]:
    at = (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
    }


def training_run() -> dict[str, Any]:
    return {
        "metadata": {"name": "support-lora", "namespace": "ml", "generation": 1},
        "status": {
            "phase": "Training",
            "observedGeneration": 1,
            "progress": {
                "step": 120,
                "totalSteps": 480,
                "epoch": 0.5,
                "loss": 1.23456,
                "evalLoss": 1.5,
                "learningRate": 0.0002,
                "tokensPerSecond": 12345.4,
                "etaSeconds": 750,
            },
            "checkpoints": [
                {"step": 100, "path": "/output/checkpoints/checkpoint-100"},
                {"step": 50, "path": "/output/checkpoints/checkpoint-50"},
            ],
            "startTime": "2026-01-01T00:30:00Z",
            "conditions": [
                cond("Validated", "True", "SpecValid", "references and dataset checked", 40),
                cond("Training", "True", "TrainingRunning", "1 training pod(s) running", 30),
            ],
        },
    }


def lines_of(text: str) -> dict[str, str]:
    """``Label: value`` lines as a dict (the conditions table left out)."""
    head = text.split("\nConditions:")[0]
    return {
        label.strip(): value.strip()
        for label, _, value in (line.partition(":") for line in head.splitlines() if line)
    }


def test_progress_bar_fills_by_share_and_clamps() -> None:
    assert progress_bar(0, 10, width=10) == "[..........] 0/10   0%"
    assert progress_bar(5, 10, width=10) == "[#####.....] 5/10  50%"
    assert progress_bar(1, 3, width=9) == "[###......] 1/3  33%"
    assert progress_bar(12, 10, width=10) == "[##########] 12/10 100%"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (750, "12m 30s"), (3600, "1h 00m"), (7530, "2h 05m"), (-3, "0s")],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_training_run_shows_progress_loss_eta_and_newest_checkpoint() -> None:
    text = format_status(training_run(), NOW)
    fields = lines_of(text)
    assert fields["Run"] == "ml/support-lora"
    assert fields["Phase"] == "Training"
    assert fields["Progress"] == f"{progress_bar(120, 480)}  epoch 0.50"
    assert "25%" in fields["Progress"]
    assert fields["Loss"] == "1.2346  eval 1.5000"
    assert fields["Rate"] == "lr 2.00e-04  12,345 tokens/s"
    assert fields["ETA"] == "12m 30s"
    assert fields["Checkpoints"] == "2, newest step 100 at /output/checkpoints/checkpoint-100"
    assert fields["Started"] == "2026-01-01T00:30:00Z (30m 00s ago)"
    assert fields["Endpoint"] == "none yet"
    table = text.split("Conditions:\n")[1].splitlines()
    assert table[0].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert table[1].split()[:4] == ["Validated", "True", "SpecValid", "40m"]
    assert table[2].endswith("1 training pod(s) running")


def test_ready_run_shows_endpoint_outputs_and_smoke_test() -> None:
    run = training_run()
    run["status"].update(
        phase="Ready",
        completionTime="2026-01-01T00:55:00Z",
        outputs={"adapter": "/output/adapter", "merged": "/output/merged"},
        endpoint={"url": "http://support-lora-serve.ml.svc:8000/v1", "modelName": "support"},
        smokeTest={"passed": True, "total": 2, "failed": 0},
    )
    run["status"]["conditions"].append(cond("Ready", "True", "EndpointReady", "serving support", 5))
    fields = lines_of(format_status(run, NOW))
    assert fields["Phase"] == "Ready"
    assert fields["Endpoint"] == "http://support-lora-serve.ml.svc:8000/v1  (model support)"
    assert fields["Adapter"] == "/output/adapter" and fields["Merged"] == "/output/merged"
    assert fields["Completed"] == "2026-01-01T00:55:00Z (5m 00s ago)"
    assert fields["Smoke test"] == "2 prompts, passed"


def test_failed_run_says_why_from_the_failed_condition() -> None:
    run = training_run()
    message = "container train exited with code 3: CUDA out of memory"
    run["status"]["phase"] = "Failed"
    run["status"]["conditions"] = [
        cond("Failed", "True", "TrainingFailed", message, 1),
        cond("Training", "False", "TrainingFailed", message, 1),
    ]
    fields = lines_of(format_status(run, NOW))
    assert fields["Phase"] == "Failed"
    assert fields["Why"] == f"TrainingFailed: {message}"
    assert "Why" not in lines_of(format_status(training_run(), NOW))


def test_new_run_and_unseen_spec_change() -> None:
    fresh = format_status({"metadata": {"name": "demo", "namespace": "default"}}, NOW)
    assert lines_of(fresh)["Phase"] == "Pending (not seen yet)"
    assert "Conditions:" not in fresh and "Progress" not in fresh
    run = training_run()
    run["metadata"]["generation"] = 2
    run["status"]["progress"] = {"step": 3}
    fields = lines_of(format_status(run, NOW))
    assert fields["Run"] == "ml/support-lora  (generation 2; operator has seen 1)"
    assert fields["Progress"] == "step 3 (total not known yet)"
    assert "Loss" not in fields and "ETA" not in fields


def test_watch_prints_each_version_once_and_stops_when_ready() -> None:
    versions = iter(
        [
            {"metadata": {"name": "r", "resourceVersion": "1"}, "status": {"phase": "Training"}},
            {"metadata": {"name": "r", "resourceVersion": "1"}, "status": {"phase": "Training"}},
            {"metadata": {"name": "r", "resourceVersion": "2"}, "status": {"phase": "Merging"}},
            {"metadata": {"name": "r", "resourceVersion": "3"}, "status": {"phase": "Ready"}},
        ]
    )
    shown: list[str] = []
    sleeps: list[float] = []
    code = watch(
        lambda: next(versions), shown.append, interval=0.5, clock=lambda: NOW, sleep=sleeps.append
    )
    assert code == 0
    assert [lines_of(s)["Phase"] for s in shown] == ["Training", "Merging", "Ready"]
    assert not shown[0].startswith("\n") and shown[1].startswith("\n")
    assert sleeps == [0.5, 0.5, 0.5]


def test_watch_stops_when_the_run_is_deleted() -> None:
    shown: list[str] = []
    assert watch(lambda: None, shown.append, interval=1, clock=lambda: NOW) == 1
    assert shown == ["the run is gone\n"]


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    assert "qwenft status support-lora -n ml --watch" in capsys.readouterr().out
