"""Every Grafana panel query and every alert of the chart returns data from real exporters.

A real Prometheus (the Debian package) scrapes, every second, a real `qwenft train` run of
the tiny model and a real `qwenft serve` answering chat requests. Then, at one instant while
both are up, for every query over trainer and server series:

- every panel query of dashboards/qwenft.json, with `$run`, `$model` and
  `$__rate_interval` filled in, parses and returns at least one series (the GPU memory panel
  needs CUDA: without it the query must parse, and the test prints which ones it could not
  prove; with a GPU it must return data);
- every `label_values` variable finds its label;
- every alert expression of files/alerts.yaml parses, and every series it reads (each vector
  selector, with its matchers) returns at least one series: an alert's condition is false on
  a healthy run, so "returns data" is asked of its inputs, which is what breaks when a name
  or label drifts;
- a PNG of the loss panel's data (query_range from Prometheus, matplotlib) is rendered;
  set QWENFT_PANEL_PNG=path to keep it (the test then waits for the whole run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from promserver import (
    ROOT,
    Prometheus,
    alert_rules,
    dashboard_queries,
    free_port,
    selectors,
    variable_metrics,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T = TypeVar("T")
RUN = "monitoring-e2e"
MODEL = "tiny-chat"
DATASET = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
GPU_ONLY = re.compile(r"qwenft_train_gpu_memory_")
EXPORTER = re.compile(r"\b(qwenft_train_|qwenft_serve_)")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str]
) -> T:
    """Poll probe() until it returns something truthy; fail naming `what` and why()."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{why()}")
        time.sleep(0.5)


@dataclass
class Process:
    """A background `qwenft` command with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        return cls(
            subprocess.Popen(
                argv,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            ),
            log,
        )

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").replace("\r", "\n")
        return f"--- {self.log.name}:\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _chat(port: int, text: str) -> None:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


@dataclass
class Exporters:
    prometheus: Prometheus
    trainer: Process
    server: Process


@pytest.fixture(scope="module")
def exporters(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exporters]:
    """Prometheus scraping a running tiny training run and a serving tiny model."""
    work = tmp_path_factory.mktemp("monitoring")
    train_port, serve_port = free_port(), free_port()
    config = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"path": str(DATASET)},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "training": {
            "max_steps": 60,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 0.001,
            "max_seq_length": 128,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "logging_steps": 1,
        },
        "evaluation": {"fraction": 0.2, "steps": 5},
        "checkpoint": {"save_steps": 1000},
        "output_dir": str(work / "out"),
        "run_name": RUN,
        "metrics_port": train_port,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(config))
    qwenft = str(Path(sys.executable).parent / "qwenft")
    server = Process.start(
        [qwenft, "serve", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
         "--host", "127.0.0.1", "--port", str(serve_port), "--device", "cpu"],
        work / "serve.log",
    )  # fmt: skip
    trainer = Process.start(
        [qwenft, "train", "--config", str(work / "train.yaml")], work / "train.log"
    )
    prometheus = Prometheus.start(
        work, {"train": f"127.0.0.1:{train_port}", "serve": f"127.0.0.1:{serve_port}"}
    )
    try:
        wait_until(
            "the inference server to load the model",
            lambda: _http_ok(f"http://127.0.0.1:{serve_port}/readyz"),
            timeout=180,
            why=server.tail,
        )
        for text in ("Hello!", "What is LoRA?", "Say something short."):
            _chat(serve_port, text)
        yield Exporters(prometheus, trainer, server)
    finally:
        for process in (trainer, server):
            process.stop()
        prometheus.stop()


def _why(exp: Exporters) -> Callable[[], str]:
    return lambda: "\n".join(
        [exp.trainer.tail(), exp.server.tail(), f"--- prometheus:\n{exp.prometheus.log_tail()}"]
    )


def _assert_data(prom: Prometheus, exprs: list[str], at: float) -> list[str]:
    """Check each expression at `at`; returns the GPU-only ones that parsed without data."""
    unproven = []
    for expr in exprs:
        series = prom.series(expr, at)  # raises with Prometheus's message when it won't parse
        if series:
            continue
        if GPU_ONLY.search(expr) and not _cuda():
            unproven.append(expr)
            continue
        pytest.fail(f"no series for {expr!r} at {at:.0f}")
    return unproven


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _exporter_side(expr: str) -> bool:
    return bool(EXPORTER.search(expr))


def test_exporter_queries_return_data(exporters: Exporters, tmp_path: Path) -> None:
    prom = exporters.prometheus
    why = _why(exporters)
    # Ready when an evaluation has run and both counters have two samples in the window.
    ready = [
        f'qwenft_train_eval_loss{{run="{RUN}"}} > 0',
        f'count_over_time(qwenft_train_step{{run="{RUN}"}}[30s]) > 3',
        f'count_over_time(qwenft_serve_requests_total{{model="{MODEL}"}}[30s]) > 3',
    ]
    wait_until(
        "Prometheus to hold training (with an evaluation) and serving data",
        lambda: all(prom.series(q) for q in ready),
        timeout=300,
        why=why,
    )
    assert exporters.trainer.popen.poll() is None, "training ended before the checks:\n" + why()
    at = time.time()
    dashboard = [q for q in dashboard_queries(RUN, MODEL) if _exporter_side(q)]
    assert len(dashboard) >= 10
    unproven = _assert_data(prom, dashboard, at)
    for query in variable_metrics():
        if _exporter_side(query):
            assert prom.series(query, at), f"dashboard variable source {query!r} has no data"
    for name, expr in alert_rules().items():
        if not _exporter_side(expr):
            continue
        prom.series(expr, at)  # the whole condition parses and evaluates
        inputs = selectors(expr)
        assert inputs, f"{name}: no series found in {expr!r}"
        unproven += _assert_data(prom, inputs, at)
    assert all(GPU_ONLY.search(q) for q in unproven)
    if unproven:
        print(f"needs CUDA to return data (parsed only): {sorted(set(unproven))}")
    keep = os.environ.get("QWENFT_PANEL_PNG")
    if keep:  # the whole run, for the README's picture
        wait_until("training to finish", lambda: exporters.trainer.popen.poll() == 0, 900, why)
        _plot_loss(prom, time.time(), Path(keep))
    else:
        _plot_loss(prom, at, tmp_path / "loss.png")


def _plot_loss(prom: Prometheus, at: float, path: Path) -> None:
    """The Loss panel's two queries over the run so far, as Grafana would draw them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, eval_loss = [q for q in dashboard_queries(RUN, MODEL) if "_loss{" in q]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for expr, label in ((loss, "train"), (eval_loss, "eval")):
        for series in prom.query_range(expr, at - 600, at, step=1):
            start = float(series["values"][0][0])
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) for _, v in series["values"]]
            ax.plot(xs, ys, label=f"{RUN} {label}", drawstyle="steps-post")
    ax.set_title(f"Loss (qwenft dashboard), run {RUN}: tiny Qwen2 LoRA on CPU")
    ax.set_xlabel("seconds")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 5_000
