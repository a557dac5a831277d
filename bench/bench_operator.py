"""Operator throughput on the real local control plane: many runs at once, and one alone.

Starts its own control plane (etcd, kube-apiserver, controllers, scheduler, kwok with fake
GPU nodes; ``hack/build-cluster.sh`` builds it once) and the operator as a subprocess,
then measures:

- single run, repeated: apply -> training Job created, apply -> training pods created,
  apply -> phase Training (p50 and max; the validation Job runs first, and kwok completes
  Job pods after its default 1 s, which the numbers include);
- N runs applied at once (100, then 500): time until every run has its training Job, and
  until every run is in phase Training (or later);
- the operator's peak RSS (VmHWM) over the whole benchmark;
- API requests per run: the API server's ``apiserver_request_total`` before and after,
  all clients (operator, controllers, scheduler, kwok) and the QwenFineTune resource alone.

Runs use 1 GPU, no merge and no inference, so they stop after training; pods beyond the
cluster's 32 fake GPUs stay Pending, which does not hold back phase Training.

    python bench/bench_operator.py                 # 100 and 500 runs, 10 single runs
    python bench/bench_operator.py --batches 50    # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from devcluster import ControlPlane  # noqa: E402
from kubernetes import client, config  # noqa: E402
from operatorkit import (  # noqa: E402
    OperatorProcess,
    ensure_priority_classes,
    install_crd,
    prepare_namespace,
)

GROUP, VERSION, PLURAL = "finetune.qwenft.io", "v1alpha1", "qwenfinetunes"
GOALS = {"single_p50_s": 1.0, "500_to_training_s": 60.0, "rss_mb": 250.0}
LATER_THAN_TRAINING = {"Training", "Merging", "Deploying", "Ready", "Succeeded"}


def run_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenFineTune",
        "metadata": {"name": name},
        "spec": {
            "model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}},
            "dataset": {"configMap": {"name": "support-chats", "key": "train.jsonl"}},
            "output": {"pvc": {"claimName": "qwenft-runs"}},
            "resources": {"gpusPerNode": 1},
            "merge": {"enabled": False},
            "inference": {"enabled": False},
        },
    }


def request_totals(api: client.ApiClient) -> tuple[float, float]:
    """(all requests, requests on qwenfinetunes) from the API server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    response = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    text = response.read().decode()
    total = crs = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                total += sample.value
                if sample.labels.get("resource") == PLURAL:
                    crs += sample.value
    return total, crs


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(what: str, probe: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def single_runs(api: client.ApiClient, namespace: str, count: int) -> dict[str, list[float]]:
    custom, batch, core = (
        client.CustomObjectsApi(api),
        client.BatchV1Api(api),
        client.CoreV1Api(api),
    )
    times: dict[str, list[float]] = {"job": [], "pods": [], "training": []}
    for i in range(count):
        name = f"single-{i}"
        start = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run_body(name))
        selector = f"finetune.qwenft.io/name={name},finetune.qwenft.io/component=train"
        seen: dict[str, float] = {}
        while len(seen) < 3:
            now = time.monotonic() - start
            if now > 60:
                raise SystemExit(f"single run {name} did not reach Training: {seen}")
            if (
                "job" not in seen
                and batch.list_namespaced_job(namespace, label_selector=selector).items
            ):
                seen["job"] = now
            if (
                "pods" not in seen
                and core.list_namespaced_pod(namespace, label_selector=selector).items
            ):
                seen["pods"] = now
            if "training" not in seen:
                body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                if (body.get("status") or {}).get("phase") in LATER_THAN_TRAINING:
                    seen["training"] = now
            time.sleep(0.02)
        for key, value in seen.items():
            times[key].append(value)
    return times


def batch(api: client.ApiClient, namespace: str, count: int) -> dict[str, float]:
    custom, jobs = client.CustomObjectsApi(api), client.BatchV1Api(api)
    before = request_totals(api)
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(
            lambda i: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, run_body(f"batch-{i}")
            ),
            range(count),
        ))  # fmt: skip
    applied = time.monotonic() - start

    def all_jobs() -> bool:
        found = jobs.list_namespaced_job(
            namespace, label_selector="finetune.qwenft.io/component=train"
        )
        return len(found.items) >= count

    def all_training() -> bool:
        runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        return (
            sum((r.get("status") or {}).get("phase") in LATER_THAN_TRAINING for r in runs) >= count
        )

    wait_for(f"{count} training Jobs", all_jobs, timeout=600)
    to_jobs = time.monotonic() - start
    wait_for(f"{count} runs in Training", all_training, timeout=600)
    to_training = time.monotonic() - start
    after = request_totals(api)
    split = latency_split(api, namespace)
    return {
        **split,
        "applied_s": applied,
        "to_jobs_s": to_jobs,
        "to_training_s": to_training,
        "requests_per_run": (after[0] - before[0]) / count,
        "cr_requests_per_run": (after[1] - before[1]) / count,
    }


def _seconds(later: Any, earlier: Any) -> float:
    return float((later - earlier).total_seconds())


def latency_split(api: client.ApiClient, namespace: str) -> dict[str, float]:
    """Where the time went, per run (1 s timestamps): the operator's reactions (run created
    -> validation Job created; validation Job complete -> training Job created) against
    the cluster's part (validation Job created -> complete: controller, scheduler, kwok)."""
    custom, jobs = client.CustomObjectsApi(api), client.BatchV1Api(api)
    created = {
        r["metadata"]["name"]: r["metadata"]["creationTimestamp"]
        for r in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    }
    by_name = {j.metadata.name: j for j in jobs.list_namespaced_job(namespace).items}
    operator_start, cluster, operator_next = [], [], []
    from qwenft_operator.observe import parse_time

    for run, stamp in created.items():
        validate, train = by_name.get(f"{run}-validate"), by_name.get(f"{run}-train")
        if validate is None or train is None or validate.status.completion_time is None:
            continue
        operator_start.append(_seconds(validate.metadata.creation_timestamp, parse_time(stamp)))
        cluster.append(
            _seconds(validate.status.completion_time, validate.metadata.creation_timestamp)
        )
        operator_next.append(
            _seconds(train.metadata.creation_timestamp, validate.status.completion_time)
        )
    return {
        "operator_to_validate_p50_s": statistics.median(operator_start),
        "operator_to_validate_max_s": max(operator_start),
        "cluster_validate_p50_s": statistics.median(cluster),
        "cluster_validate_max_s": max(cluster),
        "operator_to_train_p50_s": statistics.median(operator_next),
        "operator_to_train_max_s": max(operator_next),
    }


def new_namespace(api: client.ApiClient, name: str) -> str:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_for("the default service account", lambda: _has_sa(core, name), timeout=30)
    prepare_namespace(api, name)
    return name


def _has_sa(core: client.CoreV1Api, namespace: str) -> bool:
    return any(
        sa.metadata.name == "default"
        for sa in core.list_namespaced_service_account(namespace).items
    )


def tune_controller_manager(qps: int) -> None:
    """Start kube-controller-manager with a higher client rate limit for this benchmark."""
    from devcluster import components

    plain = components.kube_controller_manager

    def tuned(lay: Any) -> list[str]:
        return [
            *plain(lay),
            f"--kube-api-qps={qps}",
            f"--kube-api-burst={2 * qps}",
            "--concurrent-job-syncs=50",
        ]

    components.kube_controller_manager = tuned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument(
        "--controller-qps",
        type=int,
        default=0,
        help="raise kube-controller-manager's API rate limit (default 20 qps per controller) "
        "and Job sync workers, as large clusters do; 0 keeps the defaults",
    )
    args = parser.parse_args(argv)
    if args.controller_qps:
        tune_controller_manager(args.controller_qps)
    work = Path(tempfile.mkdtemp(prefix="qwenft-bench-"))
    print("starting the control plane ...", flush=True)
    cp = ControlPlane.start(work / "cluster")
    operator = None
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        install_crd(api)
        ensure_priority_classes(api)
        operator = OperatorProcess(cp.kubeconfig, work, QWENFT_PROGRESS_INTERVAL="3600")
        operator.start()
        pid = operator.proc.pid if operator.proc else 0
        singles = single_runs(api, new_namespace(api, "bench-single"), args.singles)
        results = {}
        for count in args.batches:
            print(f"applying {count} runs at once ...", flush=True)
            results[count] = batch(api, new_namespace(api, f"bench-{count}"), count)
            print(f"  {results[count]}", flush=True)
        rss = peak_rss_mb(pid)
    finally:
        if operator is not None:
            operator.stop()
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)

    def p50(values: list[float]) -> float:
        return statistics.median(values)

    print("\n| measure | value | goal |\n| --- | --- | --- |")
    print(f"| single run: apply -> training Job, p50 (max) | {p50(singles['job']):.2f} s "
          f"({max(singles['job']):.2f} s) | |")  # fmt: skip
    print(f"| single run: apply -> training pods, p50 (max) | {p50(singles['pods']):.2f} s "
          f"({max(singles['pods']):.2f} s) | < {GOALS['single_p50_s']:.0f} s |")  # fmt: skip
    print(f"| single run: apply -> phase Training, p50 | {p50(singles['training']):.2f} s | |")
    for count, result in results.items():
        goal = f"< {GOALS['500_to_training_s']:.0f} s" if count == 500 else ""
        print(f"| {count} runs: all training Jobs | {result['to_jobs_s']:.1f} s | |")
        print(f"| {count} runs: all in Training | {result['to_training_s']:.1f} s | {goal} |")
        per_run = f"{result['requests_per_run']:.1f} / {result['cr_requests_per_run']:.1f}"
        print(f"| {count} runs: API requests per run (all clients / QwenFineTune) | {per_run} | |")
    splits = (
        ("operator, run -> validation Job", "operator_to_validate"),
        ("cluster, validation Job -> complete", "cluster_validate"),
        ("operator, validated -> training Job", "operator_to_train"),
    )
    for count, result in results.items():
        for label, key in splits:
            p50_max = f"{result[key + '_p50_s']:.0f} / {result[key + '_max_s']:.0f} s"
            print(f"| {count} runs: {label}, p50 / max | {p50_max} | |")
    print(f"| operator peak RSS | {rss:.0f} MB | < {GOALS['rss_mb']:.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
