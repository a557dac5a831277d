"""``qwenft logs``: which pod's logs it reads, and how it copies the stream.

Covers: the step chosen from the run's phase (and, for an ended run, the last step that
made pods); training pods chosen by node rank (the Job completion index annotation), rank
0 by default; the newest pod of a retried Job or a gang restart; serving pods; the message
naming the phase when no pod exists yet; the main container by default; a UTF-8
character split across two chunks of the stream; --rank refused for a non-training step;
--help shows an example. Pods are in the shape the API returns them (labels from
:mod:`qwenft_operator.labels`, the Job controller's annotation); reading from the API is
in tests/e2e/test_cli_commands.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from qwenft_operator import cli, labels
from qwenft_operator.cli_logs import (
    component_for,
    copy_stream,
    default_container,
    no_pod_message,
    phase_of,
    select_pod,
)
from qwenft_operator.phases import Phase


def pod(name: str, component: labels.Component, created: str, rank: int | None = None) -> Any:
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels.build_labels("demo", component),
        "creationTimestamp": created,
    }
    if rank is not None:
        meta["annotations"] = {labels.JOB_COMPLETION_INDEX_ANNOTATION: str(rank)}
    containers = [{"name": {"serve": "server"}.get(component, component)}, {"name": "sidecar"}]
    return {
        "metadata": meta,
        "spec": {"initContainers": [{"name": "fetch"}], "containers": containers},
    }


def chosen(pods: list[Any], component: str, rank: int | None) -> str | None:
    found = select_pod(pods, component, rank)
    return None if found is None else str(found["metadata"]["name"])


PODS = [
    pod("demo-validate-x1", "validate", "2026-01-01T00:00:00Z"),
    pod("demo-train-0-old", "train", "2026-01-01T00:01:00Z", rank=0),
    pod("demo-train-1-old", "train", "2026-01-01T00:01:00Z", rank=1),
    pod("demo-train-0-new", "train", "2026-01-01T00:09:00Z", rank=0),
    pod("demo-train-1-new", "train", "2026-01-01T00:09:00Z", rank=1),
    pod("demo-serve-a", "serve", "2026-01-01T00:20:00Z"),
    pod("demo-serve-b", "serve", "2026-01-01T00:21:00Z"),
]


@pytest.mark.parametrize(
    ("phase", "component"),
    [
        (Phase.VALIDATING, "validate"),
        (Phase.TRAINING, "train"),
        (Phase.SUSPENDED, "train"),
        (Phase.MERGING, "merge"),
        (Phase.DEPLOYING, "serve"),
        (Phase.READY, "serve"),
    ],
)
def test_step_follows_the_phase(phase: Phase, component: str) -> None:
    assert component_for(phase, PODS) == component


def test_ended_run_shows_the_last_step_with_pods() -> None:
    assert component_for(Phase.FAILED, PODS[:3]) == "train"
    assert component_for(Phase.SUCCEEDED, PODS) == "serve"
    assert component_for(None, []) == "validate"


def test_training_pod_by_rank_newest_first() -> None:
    assert chosen(PODS, "train", None) == "demo-train-0-new"
    assert chosen(PODS, "train", 1) == "demo-train-1-new"
    assert chosen(PODS[:3], "train", 1) == "demo-train-1-old"
    assert select_pod(PODS, "train", 2) is None


def test_other_steps_take_their_newest_pod() -> None:
    assert chosen(PODS, "serve", None) == "demo-serve-b"
    assert chosen(PODS, "validate", None) == "demo-validate-x1"
    assert select_pod(PODS, "merge", None) is None


def test_no_pod_message_names_the_phase_and_step() -> None:
    assert no_pod_message("demo", Phase.TRAINING, "merge", None) == (
        "run 'demo' is Training: no merge pod exists yet"
    )
    assert no_pod_message("demo", None, "train", 3) == (
        "run 'demo' is Pending: no train pod of rank 3 exists yet"
    )


def test_phase_of_a_stored_run() -> None:
    assert phase_of({"status": {"phase": "Merging"}}) == Phase.MERGING
    assert phase_of({}) is None
    assert phase_of({"status": {"phase": "SomethingNewer"}}) is None


def test_main_container_not_the_init_or_sidecar() -> None:
    assert default_container(PODS[5]) == "server"
    assert default_container(PODS[1]) == "train"


def test_stream_copy_keeps_a_character_split_across_chunks() -> None:
    text = "step 1 loss 1.5 — ok ✓\nstep 2\n"
    data = text.encode()
    split = data.index("—".encode()) + 1  # inside the 3-byte dash
    out = io.StringIO()
    copy_stream(iter([data[:split], data[split:-3], data[-3:]]), out)
    assert out.getvalue() == text


def test_rank_only_for_training(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "demo", "--job", "serve", "--rank", "1"]) == 2
    assert "--rank is for training pods" in capsys.readouterr().err


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["logs", "--help"])
    assert "qwenft logs qlora-72b -n ml -f --rank 1" in capsys.readouterr().out
