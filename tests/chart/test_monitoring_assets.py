"""The chart's alert rules and Grafana dashboard: valid, tested, generated and on contract.

Covers: `promtool check rules` on files/alerts.yaml; `promtool test rules` on
files/alerts_test.yaml (training stalled, run failed, loss NaN, operator down, reconcile errors
each fire on a bad series and stay silent on a healthy one); the PrometheusRule embeds the
rule file unchanged; the committed dashboard JSON equals hack/gen_dashboard.py's output; every
metric name in the dashboard and the alerts is one of docs/metrics.md (plus Prometheus's `up`);
the dashboard has the panels and variables users look for.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from charttools import CHART, MONITORING_API, ROOT, Render, by_kind

sys.path.insert(0, str(ROOT / "hack"))

import gen_dashboard

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "dashboards" / "qwenft.json"
METRIC = re.compile(r"\b(qwenft_[a-z_]+|up)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = set(re.findall(r"^\| `(qwenft_[a-z_]+)`", text, flags=re.MULTILINE))
    assert len(names) > 20, "docs/metrics.md lists fewer series than expected"
    return names


def _base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_promtool_check_rules(promtool: Path) -> None:
    done = subprocess.run(
        [str(promtool), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_promtool_unit_tests(promtool: Path) -> None:
    done = subprocess.run(
        [str(promtool), "test", "rules", "alerts_test.yaml"],
        capture_output=True,
        text=True,
        cwd=ALERTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "alerts_test.yaml").read_text()))
    assert tested == set(_alert_exprs())


def test_alerts_cover_the_promised_conditions() -> None:
    assert set(_alert_exprs()) == {
        "QwenFineTuneFailed",
        "QwenFineTuneTrainingStalled",
        "QwenFineTuneLossNaN",
        "QwenftOperatorDown",
        "QwenftReconcileErrorsRising",
    }


def test_prometheus_rule_embeds_the_rule_file(render: Render) -> None:
    objects = render(sets=["monitoring.prometheusRule.enabled=true"], api_versions=[MONITORING_API])
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_dashboard_is_generated() -> None:
    assert DASHBOARD.read_text() == gen_dashboard.render(), (
        f"{DASHBOARD} is stale; run: python hack/gen_dashboard.py"
    )


def test_queries_use_documented_metrics_only() -> None:
    documented = _documented_metrics() | {"up"}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = gen_dashboard.queries(dashboard) + list(_alert_exprs().values())
    exprs += list(gen_dashboard.variable_queries(dashboard).values())
    used = {_base_name(name) for expr in exprs for name in METRIC.findall(expr)}
    assert used - documented == set()
    # The dashboard shows every trainer and inference series a user watches a run by.
    for name in (
        "qwenft_train_loss",
        "qwenft_train_eval_loss",
        "qwenft_train_learning_rate",
        "qwenft_train_tokens_per_second",
        "qwenft_train_eta_seconds",
        "qwenft_train_gpu_memory_allocated_bytes",
        "qwenft_serve_requests_total",
        "qwenft_serve_request_duration_seconds",
        "qwenft_operator_runs",
        "qwenft_operator_reconcile_errors_total",
    ):
        assert name in used, f"the dashboard does not show {name}"


def test_dashboard_panels_and_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    for title in ("Runs by phase", "Loss", "Learning rate", "Tokens per second", "ETA"):
        assert title in titles
    for title in ("GPU memory", "Requests", "Latency", "Reconciles", "Requests per adapter"):
        assert title in titles
    assert gen_dashboard.variable_queries(dashboard) == {
        "run": "label_values(qwenft_train_step, run)",
        "model": "label_values(qwenft_serve_requests_total, model)",
    }
    latency = next(p for p in dashboard["panels"] if p["title"] == "Latency")
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(gen_dashboard.queries(dashboard)) == 24
    # vLLM's own per-LoRA series, next to the builtin server's per-model ones.
    assert any("vllm:lora_requests_info" in q for q in gen_dashboard.queries(dashboard))
