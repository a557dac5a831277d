"""The chart's operator, RBAC, dashboard and alerts, proven on real processes.

One stack per module, all real: the chart installed by `helm` into a namespace that
enforces the "restricted" Pod Security Standard, watching two namespaces; the operator
(`python -m qwenft_operator.main`) authenticated only as the chart's ServiceAccount (a
TokenRequest token); a real `qwenft train` of the tiny model standing in for the rank-0
training pod (kwok hands out loopback pod IPs and the trainer listens on all interfaces, so
the operator's progress reader scrapes the real trainer at the pod's IP, as in a cluster); a
real `qwenft serve` answering chat requests; and a real Prometheus (the Debian package)
scraping the operator, the trainer and the server every second.

Covers:
- with only the chart's permissions the operator drives a run to Ready, and mirrors the
  real trainer's progress into the run's status.progress;
- a permission missing from the Role (no Deployment create in the second namespace) stops
  that run before serving and shows as qwenft_operator_reconcile_errors_total{reason="api403"}:
  the RBAC check has teeth, and the alert's input signal is real;
- every panel query of dashboards/qwenft.json, with `$run`, `$model` and
  `$__rate_interval` filled in, parses and returns at least one series (the GPU memory panel
  needs CUDA: without it the query must parse, and the test prints which ones it could not
  prove); every `label_values` variable finds its label;
- every alert expression of files/alerts.yaml parses, and every series it reads (each vector
  selector, with its matchers) returns at least one series: an alert's condition is false on
  a healthy run, so "returns data" is asked of its inputs, which is what breaks when a name
  or label drifts;
- a PNG of the loss panel's data (query_range, matplotlib) is rendered; with
  QWENFT_PANEL_PNG=path the test lets the run reach 100 steps and keeps the picture there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chartkit import (
    RESTRICTED,
    denials,
    fullname,
    helm_install,
    helm_uninstall,
    release_name,
    service_account_kubeconfig,
    wait_for_grants,
)
from kubernetes import client
from operatorkit import (
    CLAIMS,
    OperatorProcess,
    create_run,
    ensure_priority_classes,
    example,
    get_run,
    patch_run,
    prepare_namespace,
    wait_phase,
    wait_until,
)
from promserver import (
    ROOT,
    Prometheus,
    alert_rules,
    dashboard_queries,
    selectors,
    variable_metrics,
)
from support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAINED = "mon-train"  # held in Training; the real trainer plays its rank-0 pod
READY = "mon-ready"  # the happy path, start to Ready
DENIED = "mon-denied"  # in the namespace whose Role cannot create Deployments
MODEL = "tiny-chat"
TRAINER_PORT = 9400  # the port the operator's progress reader scrapes on a training pod
# More steps than the module lasts (the tiny model trains ~20 steps/s on one idle core): the
# trainer must still be training when the dashboard's queries run; the fixture stops it.
TRAIN_STEPS = 100_000
DATASET = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
# Series only a GPU produces: CUDA memory, and vLLM's (it serves on a GPU only).
GPU_ONLY = re.compile(r"qwenft_train_gpu_memory_|vllm:")
KWOK_AFTER = "qwenft.io/kwok-complete-after"


@dataclass
class Process:
    """A background command with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, argv: list[str], log: Path) -> Process:
        return cls(subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT), log)

    def tail(self, lines: int = 25) -> str:
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


def _namespace(api: client.ApiClient, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{os.urandom(3).hex()}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    return name


def _forbid_creating_deployments(api: client.ApiClient, namespace: str, role: str) -> None:
    """Take `create` off the Role's Deployment rule (watching them stays allowed)."""
    rbac = client.RbacAuthorizationV1Api(api)
    rules = api.sanitize_for_serialization(rbac.read_namespaced_role(role, namespace).rules)
    (rule,) = [r for r in rules if r["resources"] == ["deployments"]]
    rule["verbs"].remove("create")
    rbac.patch_namespaced_role(role, namespace, {"rules": rules})


def _train_config(work: Path, model: Path) -> Path:
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(DATASET)},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "training": {
            "max_steps": TRAIN_STEPS,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 0.001,
            "max_seq_length": 128,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "logging_steps": 1,
        },
        "evaluation": {"fraction": 0.2, "steps": 5},
        "checkpoint": {"save_steps": 10000},
        "output_dir": str(work / "out"),
        "run_name": TRAINED,
        "metrics_port": TRAINER_PORT,
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _require_free_trainer_port() -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", TRAINER_PORT))
        except OSError as err:
            pytest.fail(
                f"port {TRAINER_PORT} is taken ({err}); the operator's progress reader scrapes "
                "training pods there, so the stand-in trainer needs it"
            )


def _rank_zero_ip(api: client.ApiClient, namespace: str) -> str | None:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace,
        label_selector=f"finetune.qwenft.io/name={TRAINED},finetune.qwenft.io/component=train",
    )
    for pod in pods.items:
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return str(pod.status.pod_ip)
    return None


@dataclass
class Stack:
    api: client.ApiClient
    prometheus: Prometheus
    operator: OperatorProcess
    trainer: Process
    server: Process
    watched: str
    broken: str

    def why(self) -> str:
        return "\n".join(
            [
                f"--- operator:\n{self.operator.logs()[-4000:]}",
                self.trainer.tail(),
                self.server.tail(),
                f"--- prometheus:\n{self.prometheus.log_tail()}",
            ]
        )


@pytest.fixture(scope="module")
def stack(
    kube_client: client.ApiClient,
    kubeconfig_path: Path,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    _require_free_trainer_port()
    work = tmp_path_factory.mktemp("monitoring")
    api = kube_client
    system = _namespace(api, "qwenft-system", RESTRICTED)
    watched, broken = _namespace(api, "mon-ok"), _namespace(api, "mon-broken")
    release = release_name()
    helm_install(release, system, [watched, broken])
    ensure_priority_classes(api)
    for namespace in (watched, broken):
        prepare_namespace(api, namespace)
    _forbid_creating_deployments(api, broken, fullname(release))
    kubeconfig = service_account_kubeconfig(
        kubeconfig_path, system, fullname(release), work / "sa.kubeconfig"
    )
    wait_for_grants(kubeconfig, [watched, broken])
    operator = OperatorProcess(kubeconfig, work, QWENFT_NAMESPACES=f"{watched},{broken}")
    qwenft = str(Path(sys.executable).parent / "qwenft")
    serve_port = free_port()
    server = Process.start(
        [qwenft, "serve", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
         "--host", "127.0.0.1", "--port", str(serve_port), "--device", "cpu"],
        work / "serve.log",
    )  # fmt: skip
    trainer: Process | None = None
    prometheus: Prometheus | None = None
    try:
        operator.start()
        # The run the real trainer stands in for: its training pod stays Running for an hour.
        body = example("lora-single-gpu")
        body["metadata"]["name"] = TRAINED
        body["spec"]["suspend"] = True
        create_run(api, watched, body)
        wait_phase(api, watched, TRAINED, "Suspended", timeout=60)
        client.BatchV1Api(api).patch_namespaced_job(
            f"{TRAINED}-train",
            watched,
            {"spec": {"template": {"metadata": {"annotations": {KWOK_AFTER: "1h"}}}}},
        )
        patch_run(api, watched, TRAINED, {"spec": {"suspend": False}})
        pod_ip = wait_until(
            "the rank-0 training pod to run", lambda: _rank_zero_ip(api, watched), 60, operator.logs
        )
        # kwok hands out loopback pod IPs, so a trainer listening on all interfaces answers
        # at the pod's address.
        assert pod_ip.startswith("127."), f"kwok gave the pod a non-loopback IP {pod_ip}"
        trainer = Process.start(
            [qwenft, "train", "--config", str(_train_config(work, tiny_model_dir))],
            work / "train.log",
        )
        prometheus = Prometheus.start(
            work,
            {
                "qwenft-operator": f"127.0.0.1:{operator.metrics_port}",
                "train": f"{pod_ip}:{TRAINER_PORT}",
                "serve": f"127.0.0.1:{serve_port}",
            },
        )
        for namespace, name in ((watched, READY), (broken, DENIED)):
            body = example("lora-single-gpu")
            body["metadata"]["name"] = name
            create_run(api, namespace, body)
        wait_until(
            "the inference server to load the model",
            lambda: _http_ok(f"http://127.0.0.1:{serve_port}/readyz"),
            180,
            server.tail,
        )
        for text in ("Hello!", "What is LoRA?", "Say something short."):
            _chat(serve_port, text)
        yield Stack(api, prometheus, operator, trainer, server, watched, broken)
    except GeneratorExit:
        raise
    except BaseException:  # pytest.fail included: show what the processes said
        print(f"--- operator:\n{operator.logs()}\n{server.tail()}")
        if trainer is not None:
            print(trainer.tail())
        raise
    finally:
        for process in (trainer, server):
            if process is not None:
                process.stop()
        operator.stop()
        if prometheus is not None:
            prometheus.stop()
        helm_uninstall(release, system)
        core = client.CoreV1Api(api)
        for namespace in (watched, broken, system):
            core.delete_namespace(namespace)
        for namespace in (watched, broken):  # prepare_namespace's static volumes
            for claim in CLAIMS:
                core.delete_persistent_volume(f"{namespace}-{claim}")


def test_operator_with_chart_permissions_reaches_ready(stack: Stack) -> None:
    ready = wait_phase(stack.api, stack.watched, READY, "Ready", timeout=180)
    assert ready["status"]["endpoint"]["url"].startswith(f"http://{READY}-serve.")
    # The API server names every denial: `cannot VERB resource "R" ... in the namespace "NS"`.
    # The only one allowed is the permission the test took away.
    denied = denials(stack.operator.logs())
    assert denied <= {("create", "deployments", stack.broken)}, denied


def test_real_trainer_progress_reaches_the_status(stack: Stack) -> None:
    def progressed() -> dict[str, object] | None:
        progress = (get_run(stack.api, stack.watched, TRAINED).get("status") or {}).get("progress")
        return progress if progress and progress.get("step", 0) >= 2 else None

    progress = wait_until("status.progress from the real trainer", progressed, 240, stack.why)
    assert progress["totalSteps"] == TRAIN_STEPS
    assert 0 < float(str(progress["loss"])) < 20


def test_missing_permission_is_a_reconcile_error(stack: Stack) -> None:
    prom = stack.prometheus
    errors = 'qwenft_operator_reconcile_errors_total{job="qwenft-operator", reason="api403"}'
    wait_until("a 403 reconcile error in Prometheus", lambda: prom.series(errors), 240, stack.why)
    phase = (get_run(stack.api, stack.broken, DENIED).get("status") or {}).get("phase")
    assert phase not in {"Ready", "Succeeded"}
    assert client.AppsV1Api(stack.api).list_namespaced_deployment(stack.broken).items == []


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


def test_every_dashboard_and_alert_query_returns_data(stack: Stack, tmp_path: Path) -> None:
    prom = stack.prometheus
    ready = [
        f'qwenft_train_eval_loss{{run="{TRAINED}"}} > 0',
        f'qwenft_operator_run_step{{run="{TRAINED}"}} > 0',
        'qwenft_operator_reconcile_errors_total{reason="api403"}',
        f'count_over_time(qwenft_serve_requests_total{{model="{MODEL}"}}[30s]) > 3',
        "count_over_time(qwenft_operator_reconcile_duration_seconds_count[30s]) > 3",
    ]
    wait_until(
        "Prometheus to hold operator, training (with an evaluation) and serving data",
        lambda: all(prom.series(q) for q in ready),
        timeout=300,
        why=stack.why,
    )
    assert stack.trainer.popen.poll() is None, "training ended before the checks\n" + stack.why()
    at = time.time()
    unproven = _assert_data(prom, dashboard_queries(TRAINED, MODEL), at)
    for query in variable_metrics():
        assert prom.series(query, at), f"dashboard variable source {query!r} has no data"
    for name, expr in alert_rules().items():
        prom.series(expr, at)  # the whole condition parses and evaluates
        inputs = selectors(expr)
        assert inputs, f"{name}: no series found in {expr!r}"
        unproven += _assert_data(prom, inputs, at)
    assert all(GPU_ONLY.search(q) for q in unproven)
    if unproven:
        print(f"needs CUDA to return data (parsed only): {sorted(set(unproven))}")
    keep = os.environ.get("QWENFT_PANEL_PNG")
    if keep:  # the README's picture: let the curve grow for a while first
        step = f'qwenft_train_step{{run="{TRAINED}"}} >= 100'
        wait_until("100 training steps", lambda: prom.series(step), 900, stack.why)
        _plot_loss(prom, time.time(), Path(keep))
    else:
        _plot_loss(prom, at, tmp_path / "loss.png")


def _plot_loss(prom: Prometheus, at: float, path: Path) -> None:
    """The Loss panel's two queries over the run so far, as Grafana would draw them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, eval_loss = [q for q in dashboard_queries(TRAINED, MODEL) if "_loss{" in q]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for expr, label in ((loss, "train"), (eval_loss, "eval")):
        for series in prom.query_range(expr, at - 900, at, step=1):
            start = float(series["values"][0][0])
            # A loss gauge reads 0 until its first logging step ("not logged yet").
            points = [(float(t) - start, float(v)) for t, v in series["values"] if float(v) > 0]
            ax.plot(*zip(*points, strict=True), label=f"{TRAINED} {label}", drawstyle="steps-post")
    ax.set_title(f"Loss panel, run {TRAINED}: tiny Qwen2 LoRA on CPU, scraped by Prometheus")
    ax.set_xlabel("seconds")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    assert path.stat().st_size > 5_000
