"""The platform CLI against the real control plane and the real operator.

``qwenft`` runs as a subprocess with the cluster's KUBECONFIG, as a user runs it. Covers:
- ``qwenft status --watch`` follows a run the operator drives to Ready (kwok runs the
  pods; the run waits for its dataset ConfigMap until the watch has shown it), printing
  its phases in run order and exiting 0 once Ready; ``qwenft status``
  then shows the endpoint the operator wrote and the conditions table; an unknown run
  exits 1 naming it;
- ``qwenft render`` of the multi-node Q-LoRA example prints exactly the children the
  operator created for it, in the order of their creation times: same kinds and names,
  and each rendered object is contained in the stored one (the API server only adds
  defaults);
- ``qwenft logs`` reads real pod logs through the API server: kwok serves the cluster's
  pod log file (CRI format, hack/devcluster) as every fake pod's logs; it picks a multi-node
  run's training pod by node rank among the Job's real pods, follows (``-f``) the server pod
  as lines are appended, and names the phase when the asked-for pod doesn't exist.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster import ControlPlane
from kubernetes import client
from operatorkit import (
    CONFIG_MAPS,
    EXAMPLES,
    create_run,
    example,
    get_run,
    wait_phase,
    wait_until,
)
from qwenft_operator import kube

pytestmark = pytest.mark.e2e
DATASET = "support-chats"  # the ConfigMap the example's dataset names
PHASE_ORDER = ["Pending", "Validating", "Training", "Merging", "Deploying", "Ready"]


def qwenft(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "qwenft_operator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def field(text: str, label: str) -> list[str]:
    """The values of every ``Label: value`` line in ``text``."""
    return [
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(label + ":")
    ]


def test_status_watch_follows_a_run_to_ready(
    kube_client: client.ApiClient, namespace: str, kubeconfig_path: Path
) -> None:
    # The run waits for its dataset until the watch has shown it once: a run that reached
    # Ready before the CLI started would show only its end.
    core = client.CoreV1Api(kube_client)
    core.delete_namespaced_config_map(DATASET, namespace)
    create_run(kube_client, namespace, example("lora-single-gpu"))
    watch = subprocess.Popen(
        [sys.executable, "-m", "qwenft_operator.cli", "status", "support-lora", "-n", namespace,
         "--watch", "--interval", "0.2"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig_path)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    printed: list[str] = []
    assert watch.stdout is not None
    stdout = watch.stdout
    reader = threading.Thread(target=lambda: [printed.append(line) for line in stdout])
    reader.start()
    try:
        wait_until(
            "the watch to show the run",
            lambda: field("".join(printed), "Phase") or watch.poll() is not None,
            timeout=60,
        )
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": DATASET}, "data": CONFIG_MAPS[DATASET]}
        )
        returncode = watch.wait(timeout=120)
    finally:
        watch.kill()
        reader.join(timeout=10)
        stdout.close()
    assert returncode == 0, printed
    phases = [p.split()[0] for p in field("".join(printed), "Phase")]
    assert phases[-1] == "Ready", printed
    assert len(set(phases)) >= 2, phases  # it saw the run change, not only the end
    order = [PHASE_ORDER.index(p) for p in phases]
    assert order == sorted(order), phases

    shown = qwenft(kubeconfig_path, "status", "support-lora", "--namespace", namespace)
    assert shown.returncode == 0, shown.stderr
    status = get_run(kube_client, namespace, "support-lora")["status"]
    endpoint = status["endpoint"]
    assert field(shown.stdout, "Endpoint") == [
        f"{endpoint['url']}  (model {endpoint['modelName']})"
    ]
    assert field(shown.stdout, "Merged") == [status["outputs"]["merged"]]
    table = shown.stdout.split("Conditions:\n")[1].splitlines()
    rows = {row.split()[0]: row.split()[1:3] for row in table[1:]}
    for condition in status["conditions"]:
        assert rows[condition["type"]] == [condition["status"], condition["reason"]]

    missing = qwenft(kubeconfig_path, "status", "no-such-run", "-n", namespace)
    assert missing.returncode == 1
    assert f"no QwenFineTune 'no-such-run' in namespace '{namespace}'" in missing.stderr


def contained(rendered: Any, stored: Any, where: str = "") -> list[str]:
    """Where ``rendered`` is not part of ``stored`` (dicts: every key; lists: item by item)."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [f"{where}: {stored!r} is not a mapping"]
        return [
            problem
            for key, value in rendered.items()
            for problem in (
                contained(value, stored[key], f"{where}.{key}")
                if key in stored
                else [f"{where}.{key}: missing in the stored object"]
            )
        ]
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) != len(rendered):
            return [f"{where}: {len(rendered)} items rendered, stored {stored!r}"]
        return [
            p
            for i, (r, s) in enumerate(zip(rendered, stored, strict=True))
            for p in contained(r, s, f"{where}[{i}]")
        ]
    return (
        []
        if str(rendered) == str(stored)
        else [f"{where}: rendered {rendered!r}, stored {stored!r}"]
    )


def stored_object(api: client.ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """The object as the API server stores it (plain JSON, as the operator sent it)."""
    return kube.Clients(api).request("GET", kube.object_path(kind, namespace, name))


def test_render_prints_what_the_operator_created(
    kube_client: client.ApiClient, namespace: str, kubeconfig_path: Path
) -> None:
    created = create_run(kube_client, namespace, example("qlora-multinode-zero2"))
    wait_phase(kube_client, namespace, "qlora-72b", "Ready", timeout=120)
    rendered = qwenft(
        kubeconfig_path, "render", str(EXAMPLES / "qlora-multinode-zero2.yaml"), "-n", namespace
    )
    assert rendered.returncode == 0, rendered.stderr
    documents = list(yaml.safe_load_all(rendered.stdout))
    stored = [
        stored_object(kube_client, d["kind"], namespace, d["metadata"]["name"]) for d in documents
    ]
    # The operator created them in the rendered order (creation times never go backwards).
    times = [s["metadata"]["creationTimestamp"] for s in stored]
    assert times == sorted(times)
    for doc, found in zip(documents, stored, strict=True):
        for owner in doc["metadata"]["ownerReferences"]:
            owner["uid"] = created["metadata"]["uid"]  # the run's uid, known once applied
        problems = contained(doc, found, f"{doc['kind']} {doc['metadata']['name']}")
        assert not problems, "\n".join(problems[:10])
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    assert kinds == [
        ("ConfigMap", "qlora-72b-config"),
        ("Deployment", "qlora-72b-serve"),
        ("Job", "qlora-72b-merge"),
        ("Job", "qlora-72b-train"),
        ("Job", "qlora-72b-validate"),
        ("Service", "qlora-72b-serve"),
        ("Service", "qlora-72b-train"),
    ]


def cri_lines(*texts: str) -> str:
    """Log lines in the CRI format a container runtime writes (and kwok reads)."""
    return "".join(f"2026-01-01T00:00:0{i}.000000000Z stdout F {t}\n" for i, t in enumerate(texts))


def test_logs_by_rank_and_follow(
    kube_client: client.ApiClient, namespace: str, kubeconfig_path: Path, cluster: ControlPlane
) -> None:
    create_run(kube_client, namespace, example("qlora-multinode-zero2"))
    wait_phase(kube_client, namespace, "qlora-72b", "Ready", timeout=120)
    with cluster.pod_log.open("a", encoding="utf-8") as log:
        log.write(cri_lines("step 1 loss 2.31", "step 2 loss 2.05"))
    pods = (
        client.CoreV1Api(kube_client)
        .list_namespaced_pod(namespace, label_selector="finetune.qwenft.io/name=qlora-72b")
        .items
    )
    for rank in (0, 1):
        of_rank = [
            p for p in pods
            if p.metadata.labels["finetune.qwenft.io/component"] == "train"
            and p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == str(rank)
        ]  # fmt: skip
        newest = max(of_rank, key=lambda p: p.metadata.creation_timestamp).metadata.name
        shown = qwenft(kubeconfig_path, "logs", "qlora-72b", "-n", namespace, "--rank", str(rank))
        assert shown.returncode == 0, shown.stderr
        assert f"==> pod {newest}, container train" in shown.stderr
        assert shown.stdout.endswith("step 1 loss 2.31\nstep 2 loss 2.05\n"), shown.stdout

    # -f on a Ready run: the server pod's log, with lines appended while it follows.
    servers = [p for p in pods if p.metadata.labels["finetune.qwenft.io/component"] == "serve"]
    server = max(servers, key=lambda p: p.metadata.creation_timestamp).metadata.name
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path)}
    follow = subprocess.Popen(
        [sys.executable, "-m", "qwenft_operator.cli", "logs", "qlora-72b", "-n", namespace, "-f"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    stdout = follow.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    seen: list[str] = []

    def has(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get_nowait())
        return f"{text}\n" in seen

    try:
        wait_until("the followed log's first lines", lambda: has("step 2 loss 2.05"), timeout=30)
        with cluster.pod_log.open("a", encoding="utf-8") as log:
            log.write(cri_lines("served request 1"))
        wait_until("a line appended while following", lambda: has("served request 1"), timeout=30)
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        _, err = follow.communicate(timeout=10)
    assert f"==> pod {server}, container server" in err, err

    absent = qwenft(kubeconfig_path, "logs", "qlora-72b", "-n", namespace, "--rank", "5")
    assert absent.returncode == 1
    assert "run 'qlora-72b' is Ready: no train pod of rank 5 exists yet" in absent.stderr
    merged = qwenft(kubeconfig_path, "logs", "qlora-72b", "-n", namespace, "--job", "merge")
    assert merged.returncode == 0 and "container merge" in merged.stderr, merged.stderr
