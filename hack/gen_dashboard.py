"""Generate the qwenft Grafana dashboard, the JSON the Helm chart ships.

The dashboard is code (grafanalib) so that panels stay consistent and reviewable; the JSON in
charts/qwenft-operator/dashboards/qwenft.json is its output, kept in sync by a test. Every
query uses the series of docs/metrics.md; `queries()` lists them for the monitoring e2e test,
which runs each one against a real Prometheus.

    python hack/gen_dashboard.py            # rewrite the chart's dashboard JSON
    python hack/gen_dashboard.py --check    # exit 1 when the committed JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

OUTPUT = Path(__file__).resolve().parents[1] / "charts/qwenft-operator/dashboards/qwenft.json"
DATASOURCE = "${datasource}"
RUN = 'run=~"$run"'
MODEL = 'model=~"$model"'
WIDTH = 24  # Grafana's grid width
HEIGHT = 8


def _target(expr: str, legend: str, ref: str) -> g.Target:
    return g.Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE)


def _timeseries(
    title: str, description: str, targets: list[tuple[str, str]], unit: str = ""
) -> g.TimeSeries:
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
        unit=unit,
        legendDisplayMode="list",
        tooltipMode="multi",
    )


def _stat(title: str, description: str, expr: str, legend: str, unit: str = "") -> g.Stat:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[_target(expr, legend, "A")],
        format=unit or "none",
        reduceCalc="lastNotNull",
        graphMode="area",
    )


def _rows() -> list[tuple[str, list[g.Panel]]]:
    """(row title, panels) in dashboard order."""
    rate = "[$__rate_interval]"
    runs = [
        _timeseries(
            "Runs by phase",
            "QwenFineTunes the operator sees, by status.phase.",
            [("sum by (phase) (qwenft_operator_runs)", "{{phase}}")],
        ),
        _timeseries(
            "Run progress",
            "Optimizer steps done over steps planned, as mirrored into each run's status.",
            [
                (
                    "qwenft_operator_run_step / qwenft_operator_run_total_steps",
                    "{{namespace}}/{{run}}",
                )
            ],
            unit="percentunit",
        ),
        _timeseries(
            "Phase changes",
            "Runs entering each phase, per second.",
            [
                (
                    f"sum by (to_phase) (rate(qwenft_operator_phase_transitions_total{rate}))",
                    "{{to_phase}}",
                )
            ],
            unit="ops",
        ),
        _timeseries(
            "Time to training p50",
            "Median time from a run's creation to phase Training (validation and queueing).",
            [
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(qwenft_operator_time_to_training_seconds_bucket{rate})))",
                    "p50",
                )
            ],
            unit="s",
        ),
    ]
    training = [
        _timeseries(
            "Loss",
            "Training loss of the last logging step and held-out loss of the last evaluation.",
            [
                (f"qwenft_train_loss{{{RUN}}}", "{{run}} train"),
                (f"qwenft_train_eval_loss{{{RUN}}}", "{{run}} eval"),
            ],
        ),
        _timeseries(
            "Learning rate",
            "Current learning rate of the scheduler.",
            [(f"qwenft_train_learning_rate{{{RUN}}}", "{{run}}")],
        ),
        _timeseries(
            "Tokens per second",
            "Trained (non-padding) tokens per second over all ranks.",
            [(f"qwenft_train_tokens_per_second{{{RUN}}}", "{{run}}")],
        ),
        _stat(
            "ETA",
            "Estimated time to the last optimizer step.",
            f"qwenft_train_eta_seconds{{{RUN}}}",
            "{{run}}",
            unit="s",
        ),
        _timeseries(
            "GPU memory",
            "CUDA memory allocated and reserved by PyTorch on rank 0 (GPU runs only).",
            [
                (f"qwenft_train_gpu_memory_allocated_bytes{{{RUN}}}", "{{run}} allocated"),
                (f"qwenft_train_gpu_memory_reserved_bytes{{{RUN}}}", "{{run}} reserved"),
            ],
            unit="bytes",
        ),
    ]
    inference = [
        _timeseries(
            "Requests",
            "Requests per second to the served model, by HTTP status.",
            [
                (
                    f"sum by (model, status) (rate(qwenft_serve_requests_total{{{MODEL}}}{rate}))",
                    "{{model}} {{status}}",
                )
            ],
            unit="reqps",
        ),
        _timeseries(
            "Latency",
            "Request latency quantiles from the server's histogram.",
            [
                (
                    f"histogram_quantile({q}, sum by (le, model) "
                    f"(rate(qwenft_serve_request_duration_seconds_bucket{{{MODEL}}}{rate})))",
                    f"{{{{model}}}} p{name}",
                )
                for q, name in (("0.5", "50"), ("0.99", "99"))
            ],
            unit="s",
        ),
        _timeseries(
            "Generated tokens per second",
            "Completion tokens generated per second.",
            [
                (
                    f"sum by (model) (rate(qwenft_serve_generated_tokens_total{{{MODEL}}}{rate}))",
                    "{{model}}",
                )
            ],
        ),
    ]
    # A QwenModelServer serves each adapter under its own model name. The builtin server
    # labels its series by that name; vLLM labels its own by the base's served name and
    # reports the adapters in the running batch as label values of vllm:lora_requests_info.
    adapters = [
        _timeseries(
            "Requests per adapter",
            "Requests per second by adapter (builtin engine: qwenft_serve_*, one model per "
            "adapter); vLLM counts finished requests per server, all adapters together.",
            [
                (
                    f"sum by (model) (rate(qwenft_serve_requests_total{{{MODEL}}}{rate}))",
                    "{{model}}",
                ),
                (
                    f"sum by (namespace, model_name) (rate(vllm:request_success_total{rate}))",
                    "{{namespace}} {{model_name}} (vLLM, all adapters)",
                ),
            ],
            unit="reqps",
        ),
        _timeseries(
            "Tokens per adapter",
            "Prompt and generated tokens per second by adapter (builtin), and per vLLM server.",
            [
                (
                    f"sum by (model) (rate(qwenft_serve_prompt_tokens_total{{{MODEL}}}{rate}))",
                    "{{model}} prompt",
                ),
                (
                    f"sum by (model) (rate(qwenft_serve_generated_tokens_total{{{MODEL}}}{rate}))",
                    "{{model}} generated",
                ),
                (
                    f"sum by (namespace, model_name) (rate(vllm:generation_tokens_total{rate}))",
                    "{{namespace}} {{model_name}} generated (vLLM, all adapters)",
                ),
            ],
        ),
        g.Table(
            title="vLLM adapters in the batch",
            description="Per vLLM pod: the adapters with running and waiting requests "
            "(vllm:lora_requests_info, 'name' or 'name:count' lists) and --max-loras.",
            dataSource=DATASOURCE,
            targets=[
                g.Target(
                    expr="max by (namespace, pod, max_lora, running_lora_adapters, "
                    "waiting_lora_adapters) (vllm:lora_requests_info)",
                    legendFormat="{{pod}}",
                    refId="A",
                    datasource=DATASOURCE,
                    instant=True,
                    format="table",
                )
            ],
        ),
    ]
    operator = [
        _timeseries(
            "Reconciles",
            "Reconciles per second, and failed reconciles per second by reason.",
            [
                (
                    f"sum(rate(qwenft_operator_reconcile_duration_seconds_count{rate}))",
                    "reconciles",
                ),
                (
                    f"sum by (reason) (rate(qwenft_operator_reconcile_errors_total{rate}))",
                    "errors {{reason}}",
                ),
            ],
            unit="ops",
        ),
        _timeseries(
            "Reconcile duration p99",
            "99th percentile of the time one reconcile takes.",
            [
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(qwenft_operator_reconcile_duration_seconds_bucket{rate})))",
                    "p99",
                )
            ],
            unit="s",
        ),
    ]
    return [
        ("Runs", runs),
        ("Training: $run", training),
        ("Inference: $model", inference),
        ("Model servers: adapters", adapters),
        ("Operator", operator),
    ]


def _layout() -> list[g.Panel]:
    """Rows with their panels placed left to right, three to a line."""
    panels: list[g.Panel] = []
    y = 0
    for title, row_panels in _rows():
        panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=WIDTH, x=0, y=y)))
        y += 1
        width = WIDTH // min(3, len(row_panels))
        for i, panel in enumerate(row_panels):
            panel.gridPos = g.GridPos(h=HEIGHT, w=width, x=(i % 3) * width, y=y + (i // 3) * HEIGHT)
        y += HEIGHT * ((len(row_panels) + 2) // 3)
        panels.extend(row_panels)
    return panels


def _variable(name: str, label: str, metric: str) -> g.Template:
    return g.Template(
        name=name,
        label=label,
        query=f"label_values({metric}, {name})",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
    )


def build_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    dashboard = g.Dashboard(
        title="qwenft",
        uid="qwenft",
        description="Fine-tuning runs, inference and the operator of qwenft.",
        tags=["qwenft"],
        timezone="browser",
        refresh="30s",
        time=g.Time("now-6h", "now"),
        templating=g.Templating(
            list=[
                g.Template(
                    name="datasource", label="Data source", query="prometheus", type="datasource"
                ),
                _variable("run", "Run", "qwenft_train_step"),
                _variable("model", "Served model", "qwenft_serve_requests_total"),
            ]
        ),
        panels=_layout(),
    ).auto_panel_ids()
    data: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    for variable in data["templating"]["list"]:
        if variable.get("includeAll"):  # start on "All", as Grafana saves it
            variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return data


def render() -> str:
    """The dashboard JSON exactly as committed to the chart."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels, in panel order."""
    found: list[str] = []
    for panel in dashboard.get("panels", []):
        found.extend(queries(panel))
        found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    return found


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variable name -> its `label_values(...)` query (Grafana syntax, not PromQL)."""
    return {
        v["name"]: v["query"]
        for v in dashboard["templating"]["list"]
        if str(v.get("query", "")).startswith("label_values(")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the JSON is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="dashboard JSON path")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale; run: python hack/gen_dashboard.py", file=sys.stderr)
            return 1
        print(f"{args.output}: up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(queries(build_dashboard()))} queries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
