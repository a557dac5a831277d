"""The operator's Prometheus metrics.

Covers: every series of the operator section of docs/metrics.md is exported with its type
and labels (and nothing else); phase counts follow runs through transitions and deletion;
transitions and creation-to-Training are recorded once; per-run progress gauges are
mirrored and removed with the run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from qwenft_operator.metrics import OperatorMetrics
from qwenft_operator.status import Progress

ROOT = Path(__file__).parents[2]
KEY = ("team", "demo")


def documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the operator table of docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## Operator", 1)[1]
    rows = re.findall(r"^\| `(qwenft_operator_\w+)` \| (\w+) \|([^|]*)\|", section, re.M)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def exported(metrics: OperatorMetrics) -> dict[str, tuple[str, set[str]]]:
    out = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):  # prometheus-client's creation timestamps
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        out[name] = (family.type, labels)
    return out


def test_exported_series_match_the_docs() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase(KEY, "Validating", "Training")
    metrics.mirror_progress(KEY, Progress(step=1, total_steps=2, loss=0.5, tokens_per_second=3))
    metrics.reconcile_errors.labels(reason="api500").inc()
    metrics.reconcile_duration.observe(0.1)
    metrics.time_to_training.observe(1.0)
    metrics.training_restarts.labels(cause="Failure").inc()
    assert exported(metrics) == documented()


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    found = metrics.registry.get_sample_value(name, labels)
    return found


def test_phase_counts_transitions_and_time_to_training() -> None:
    metrics = OperatorMetrics()
    created = datetime(2026, 1, 1, tzinfo=UTC)
    metrics.observe_phase(KEY, None, "Validating", created=created, now=created)
    metrics.observe_phase(
        KEY, "Validating", "Training", created=created, now=created + timedelta(seconds=4)
    )
    metrics.observe_phase(KEY, "Training", "Training")
    assert value(metrics, "qwenft_operator_runs", phase="Training") == 1
    assert value(metrics, "qwenft_operator_runs", phase="Validating") == 0
    transitions = "qwenft_operator_phase_transitions_total"
    assert value(metrics, transitions, from_phase="Validating", to_phase="Training") == 1
    assert value(metrics, "qwenft_operator_time_to_training_seconds_count") == 1
    assert value(metrics, "qwenft_operator_time_to_training_seconds_sum") == 4
    metrics.mirror_progress(KEY, Progress(step=7, loss=1.5))
    assert value(metrics, "qwenft_operator_run_step", namespace="team", run="demo") == 7
    metrics.forget(KEY)
    assert value(metrics, "qwenft_operator_runs", phase="Training") == 0
    assert value(metrics, "qwenft_operator_run_step", namespace="team", run="demo") is None
    assert metrics.tracked_runs == 0
