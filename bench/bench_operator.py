"""Operator throughput on the real local control plane: many runs at once, and one alone.

Starts its own control plane (etcd, kube-apiserver, controllers, scheduler, kwok with fake
GPU nodes; ``hack/build-cluster.sh`` builds it once) and the operator as a subprocess,
then measures:

- single run, repeated: apply -> training Job created, apply -> training pods created,
  apply -> phase Training (p50 and max). The validation Job runs first; kwok lets its pod
  run ``--validator-seconds`` (default 0, so the numbers are what the operator and the
  cluster add to the validator's own run time);
- N runs applied at once (100, then 500): time until every run has its training Job, and
  until every run is in phase Training (or later);
- where the time of a batch went: per run, the operator's two reactions against the
  cluster's part, and the CPU seconds each process spent (all share the machine's cores);
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
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT / "tests"))  # support.py, shared with the tests
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from devcluster import ControlPlane  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from operatorkit import (  # noqa: E402
    OperatorProcess,
    ensure_priority_classes,
    install_crd,
    prepare_namespace,
)

GROUP, VERSION, PLURAL = "finetune.qwenft.io", "v1alpha1", "qwenfinetunes"
GOALS = {"single_p50_s": 1.0, "500_to_training_s": 60.0, "rss_mb": 250.0}
RUN_LABEL = "finetune.qwenft.io/name"
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
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def single_runs(api: client.ApiClient, namespace: str, count: int) -> dict[str, list[float]]:
    custom, batch, core = (
        client.CustomObjectsApi(api),
        client.BatchV1Api(api),
        client.CoreV1Api(api),
    )
    selector = "finetune.qwenft.io/component=train"
    watches = {
        "job": FirstSeen(batch.list_namespaced_job, None, namespace, label_selector=selector),
        "pods": FirstSeen(core.list_namespaced_pod, None, namespace, label_selector=selector),
        "training": FirstSeen(
            custom.list_namespaced_custom_object,
            lambda run: (run.get("status") or {}).get("phase") in LATER_THAN_TRAINING,
            GROUP, VERSION, namespace, PLURAL,
        ),
    }  # fmt: skip
    times: dict[str, list[float]] = {key: [] for key in watches}
    for i in range(count):
        name = f"single-{i}"
        start = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run_body(name))
        for key, seen in watches.items():
            wait_for(f"{name}: {key}", lambda seen=seen, name=name: name in seen.times, timeout=60)
            times[key].append(seen.times[name] - start)
    for seen in watches.values():
        seen.stop()
    return times


def bare_training_job(namespace: str, name: str) -> dict[str, Any]:
    """The training Job the operator would build for ``run_body(name)``, standing alone:
    no owner and no managed-by label, so the operator neither sees nor collects it."""
    from qwenft_operator.builders import training
    from qwenft_operator.parsed_run import Run

    body = run_body(name)
    body["metadata"].update(namespace=namespace, uid=f"bare-{name}")
    job = training.build_train_job(Run.from_body(body))
    del job["metadata"]["ownerReferences"]
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta["labels"].pop("app.kubernetes.io/managed-by", None)
    return job


def create_job(api: client.ApiClient, namespace: str, job: dict[str, Any]) -> None:
    """POST a Job as plain JSON (the typed client refuses integer quantities)."""
    from qwenft_operator import kube

    kube.Clients(api).request("POST", kube.object_path("Job", namespace), body=job)


def bare_jobs(api: client.ApiClient, namespace: str, names: list[str]) -> float:
    """Baseline: the training Jobs of ``names`` created directly at once (no run, no
    validation, no operator); seconds until every one has its pod."""
    pods = FirstSeen(
        client.CoreV1Api(api).list_namespaced_pod, None, namespace,
        label_selector="finetune.qwenft.io/component=train",
    )  # fmt: skip
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(
            lambda name: create_job(api, namespace, bare_training_job(namespace, name)), names
        ))  # fmt: skip
    wait_for("the bare Jobs' pods", lambda: all(n in pods.times for n in names), timeout=600)
    pods.stop()
    return max(pods.times[n] for n in names) - start


class FirstSeen:
    """Watches one list and records when each run first had a matching object.

    Objects are keyed by their run's name label (children) or their own name (runs);
    ``matches`` None takes every object.

    A watch, not a polling loop: listing 500 runs many times a second would load the API
    server the benchmark measures.
    """

    def __init__(self, list_fn: Any, matches: Any, *args: Any, **kwargs: Any) -> None:
        self.times: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(list_fn, matches, args, kwargs), daemon=True
        )
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("the benchmark's watch did not start")

    def _loop(self, list_fn: Any, matches: Any, args: Any, kwargs: Any) -> None:
        listed = list_fn(*args, **kwargs)
        if isinstance(listed, dict):
            version = listed["metadata"]["resourceVersion"]
        else:
            version = listed.metadata.resource_version
        self._ready.set()
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                list_fn, *args, resource_version=version, timeout_seconds=30, **kwargs
            )
            for event in stream:
                obj = event["object"]
                meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
                version = meta["resourceVersion" if isinstance(obj, dict) else "resource_version"]
                run = (meta.get("labels") or {}).get(RUN_LABEL, meta["name"])
                if run not in self.times and (matches is None or matches(obj)):
                    self.times[run] = time.monotonic()
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()


def batch(api: client.ApiClient, namespace: str, count: int) -> dict[str, float]:
    custom, jobs = client.CustomObjectsApi(api), client.BatchV1Api(api)
    training = FirstSeen(
        custom.list_namespaced_custom_object,
        lambda run: (run.get("status") or {}).get("phase") in LATER_THAN_TRAINING,
        GROUP, VERSION, namespace, PLURAL,
    )  # fmt: skip
    train_jobs = FirstSeen(
        jobs.list_namespaced_job,
        None,
        namespace,
        label_selector="finetune.qwenft.io/component=train",
    )
    train_pods = FirstSeen(
        client.CoreV1Api(api).list_namespaced_pod,
        None,
        namespace,
        label_selector="finetune.qwenft.io/component=train",
    )
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
    wait_for(f"{count} training Jobs", lambda: len(train_jobs.times) >= count, timeout=600)
    wait_for(f"{count} runs in Training", lambda: len(training.times) >= count, timeout=600)
    wait_for(f"{count} runs' training pods", lambda: len(train_pods.times) >= count, timeout=600)
    after = request_totals(api)
    for seen in (training, train_jobs, train_pods):
        seen.stop()
    split = latency_split(api, namespace)
    return {
        **split,
        "applied_s": applied,
        "to_jobs_s": max(train_jobs.times.values()) - start,
        "to_training_s": max(training.times.values()) - start,
        "to_pods_s": max(train_pods.times.values()) - start,
        "requests_per_run": (after[0] - before[0]) / count,
        "cr_requests_per_run": (after[1] - before[1]) / count,
    }


def _seconds(later: Any, earlier: Any) -> float:
    return float((later - earlier).total_seconds())


def latency_split(api: client.ApiClient, namespace: str) -> dict[str, float]:
    """Where the time went, per run (1 s timestamps): the operator's reactions (run created
    -> validation Job created; validator exited -> training Job created) against the
    cluster's part (validation Job created -> validator exited: Job controller, scheduler,
    kwok)."""
    custom, jobs = client.CustomObjectsApi(api), client.BatchV1Api(api)
    created = {
        r["metadata"]["name"]: r["metadata"]["creationTimestamp"]
        for r in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    }
    by_name = {j.metadata.name: j for j in jobs.list_namespaced_job(namespace).items}
    validators = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector="finetune.qwenft.io/component=validate"
    )
    exited = {}
    for pod in validators.items:
        for container in pod.status.container_statuses or []:
            if container.state.terminated is not None and container.state.terminated.exit_code == 0:
                exited[pod.metadata.labels[RUN_LABEL]] = container.state.terminated.finished_at
    operator_start, cluster, operator_next = [], [], []
    from qwenft_operator.observe import parse_time

    for run, stamp in created.items():
        validate, train = by_name.get(f"{run}-validate"), by_name.get(f"{run}-train")
        if validate is None or train is None or run not in exited:
            continue
        operator_start.append(_seconds(validate.metadata.creation_timestamp, parse_time(stamp)))
        cluster.append(_seconds(exited[run], validate.metadata.creation_timestamp))
        operator_next.append(_seconds(train.metadata.creation_timestamp, exited[run]))
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def _replaced_config(workdir: Path, name: str, old: str, new: str, count: int) -> Path:
    """A copy of hack/kwok/<name> in ``workdir`` with ``old`` (found ``count`` times) -> ``new``."""
    from devcluster import components

    text = (components.KWOK_DIR / name).read_text()
    if text.count(old) != count:
        raise SystemExit(f"hack/kwok/{name} no longer has {count} x {old!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    patched = workdir / name
    patched.write_text(text.replace(old, new))
    return patched


def tune_kwok(validator_seconds: float, parallelism: int, workdir: Path) -> None:
    """Start kwok for this benchmark: validation pods exit 0 after ``validator_seconds``
    (other Job pods keep kwok's 1 s), and ``parallelism`` pod status writers.

    A validation pod's run time is the dataset's (tokenizing it), not the operator's; the
    benchmark sets it so the single-run latency shows what the operator and cluster add.
    kwok plays every node's kubelet with 4 writers in all by default, where a real cluster
    has one kubelet per node.
    """
    from devcluster import components

    component = '.metadata.labels["finetune.qwenft.io/component"]'
    annotation = """expressionFrom: '.metadata.annotations["qwenft.io/kwok-complete-after"]'"""
    stages = _replaced_config(
        workdir, "pod-stages.yaml", annotation,
        f"""expressionFrom: 'if {component} == "validate" then "{validator_seconds}s" """
        """else .metadata.annotations["qwenft.io/kwok-complete-after"] end'""",
        count=2,
    )  # fmt: skip
    options = _replaced_config(
        workdir, "kwok.yaml", "podPlayStageParallelism: 4",
        f"podPlayStageParallelism: {parallelism}", count=1,
    )  # fmt: skip
    patched = {"pod-stages.yaml": stages, "kwok.yaml": options}
    plain = components.kwok

    def tuned(lay: Any) -> list[str]:
        originals = {
            f"--config={components.KWOK_DIR / n}": f"--config={p}" for n, p in patched.items()
        }
        return [originals.get(arg, arg) for arg in plain(lay)]

    components.kwok = tuned


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
    parser.add_argument(
        "--validator-seconds",
        type=float,
        default=0.0,
        help="how long kwok lets each dataset validation pod run before it exits 0 "
        "(default 0: the single-run latency is then the operator's and the cluster's own)",
    )
    parser.add_argument(
        "--kwok-parallelism",
        type=int,
        default=4,
        help="kwok's pod status writers (podPlayStageParallelism; kwok's default 4), the "
        "stand-in for one kubelet per node",
    )
    args = parser.parse_args(argv)
    if args.controller_qps:
        tune_controller_manager(args.controller_qps)
    work = Path(tempfile.mkdtemp(prefix="qwenft-bench-"))
    tune_kwok(args.validator_seconds, args.kwok_parallelism, work / "kwok")
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
        pids = {p.name: p.pid for p in cp.processes if p.name != "watchdog"}
        pids["operator"] = pid
        singles = single_runs(api, new_namespace(api, "bench-single"), args.singles)
        alone = new_namespace(api, "bare-single")
        bare_single = [bare_jobs(api, alone, [f"s-{i}"]) for i in range(args.singles)]
        results, cpu, bare = {}, {}, {}
        for count in args.batches:
            print(f"applying {count} runs at once ...", flush=True)
            before = cpu_by_process(pids)
            results[count] = batch(api, new_namespace(api, f"bench-{count}"), count)
            after = cpu_by_process(pids)
            cpu[count] = {name: after[name] - before[name] for name in pids}
            print(f"  {results[count]}", flush=True)
            print(f"creating {count} bare training Jobs at once (baseline) ...", flush=True)
            names = [f"b-{i}" for i in range(count)]
            bare[count] = bare_jobs(api, new_namespace(api, f"bare-{count}"), names)
        rss = peak_rss_mb(pid)
    finally:
        if operator is not None:
            operator.stop()
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)

    def p50(values: list[float]) -> float:
        return statistics.median(values)

    baseline = "bare training Jobs, no operator"
    print(f"\n| measure | qwenft | baseline: {baseline} | goal |\n| --- | --- | --- | --- |")

    def row(measure: str, value: str, base: str = "", goal: str = "") -> None:
        print(f"| {measure} | {value} | {base} | {goal} |")

    def p50_max(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s ({max(values):.2f} s)"

    row("single run: apply -> training Job, p50 (max)", p50_max(singles["job"]))
    row(
        f"single run: apply -> training pods, p50 (max); validator runs "
        f"{args.validator_seconds:g} s",
        p50_max(singles["pods"]),
        p50_max(bare_single),
        f"< {GOALS['single_p50_s']:.0f} s",
    )
    row("single run: apply -> phase Training, p50 (max)", p50_max(singles["training"]))
    for count, result in results.items():
        goal = f"< {GOALS['500_to_training_s']:.0f} s" if count == 500 else ""
        row(f"{count} runs: all training Jobs", f"{result['to_jobs_s']:.1f} s")
        row(f"{count} runs: all in Training", f"{result['to_training_s']:.1f} s", goal=goal)
        row(
            f"{count} runs: all training pods created",
            f"{result['to_pods_s']:.1f} s",
            f"{bare[count]:.1f} s",
        )
        per_run = f"{result['requests_per_run']:.1f} / {result['cr_requests_per_run']:.1f}"
        row(f"{count} runs: API requests per run (all clients / QwenFineTune)", per_run)
    splits = (
        ("operator, run -> validation Job", "operator_to_validate"),
        ("cluster, validation Job -> validator exited", "cluster_validate"),
        ("operator, validator exited -> training Job", "operator_to_train"),
    )
    for count, result in results.items():
        for label, key in splits:
            spent = f"{result[key + '_p50_s']:.0f} / {result[key + '_max_s']:.0f} s"
            row(f"{count} runs: {label}, p50 / max", spent)
    for count, used in cpu.items():
        spent = ", ".join(f"{name} {seconds:.0f}" for name, seconds in used.items())
        row(f"{count} runs: CPU seconds until all in Training", spent)
    row("operator peak RSS", f"{rss:.0f} MB", goal=f"< {GOALS['rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
