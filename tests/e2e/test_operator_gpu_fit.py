"""The operator on the real control plane: the GPU-fit check before training.

kwok's GPU nodes carry GPU Feature Discovery's ``nvidia.com/gpu.memory`` label (81559 MiB
on the H100 nodes). Covers:
- a LoRA of Qwen2.5-72B on one H100 (about 150 GiB of bf16 weights): once validation
  passed, the run fails with FitsGPU False (GpuMemoryExceeded) naming the node label's
  limit, a Warning Event says so, and no training Job is ever created;
- a run whose estimate is 95 % of ``spec.resources.gpuMemory``: FitsGPU True
  (GpuMemoryTight), a Warning Event, and its training Job is created.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from operatorkit import condition, create_run, example, get_run, wait_phase, wait_until
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.parsed_run import Run
from qwenft_trainer.fit_estimate import estimate_memory
from qwenft_trainer.model_shapes import known_config

pytestmark = pytest.mark.e2e
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def named(body: dict[str, Any], name: str) -> dict[str, Any]:
    body["metadata"]["name"] = name
    return body


def train_jobs(api: client.ApiClient, namespace: str, run: str) -> list[Any]:
    selector = f"finetune.qwenft.io/name={run},finetune.qwenft.io/component=train"
    jobs: list[Any] = (
        client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector).items
    )
    return jobs


def warning(api: client.ApiClient, namespace: str, run: str, reason: str) -> Any:
    events = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={run},involvedObject.kind=QwenFineTune"
        )
        .items
    )
    return next((e for e in events if e.type == "Warning" and e.reason == reason), None)


def test_a_run_too_large_for_its_gpus_fails_before_training(
    kube_client: client.ApiClient, namespace: str
) -> None:
    body = named(example("lora-single-gpu", scheduling={"nodeSelector": H100}), "too-large")
    body["spec"]["model"]["hub"]["id"] = "Qwen/Qwen2.5-72B-Instruct"
    create_run(kube_client, namespace, body)
    failed = wait_phase(kube_client, namespace, "too-large", "Failed", timeout=60)
    fits = condition(failed, "FitsGPU")
    assert fits is not None and fits["status"] == "False"
    assert fits["reason"] == "GpuMemoryExceeded"
    assert "nvidia.com/gpu.memory=81559" in fits["message"]
    assert "more than the 79.6 GiB GPU memory" in fits["message"]
    assert condition(failed, "Failed")["reason"] == "GpuMemoryExceeded"  # type: ignore[index]
    wait_until(
        "a GpuMemoryExceeded Warning Event",
        lambda: warning(kube_client, namespace, "too-large", "GpuMemoryExceeded"),
        timeout=30,
    )
    assert train_jobs(kube_client, namespace, "too-large") == []


def test_a_tight_run_trains_with_a_warning(kube_client: client.ApiClient, namespace: str) -> None:
    body = named(example("lora-single-gpu"), "tight")
    run = Run.from_body({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    config = known_config("Qwen/Qwen2.5-7B-Instruct") or {}
    total = estimate_memory(config, build_train_config(run), gpus=1).total
    body["spec"]["resources"]["gpuMemory"] = str(int(total / 0.95))
    create_run(kube_client, namespace, body)
    wait_until(
        "the tight run's training Job",
        lambda: train_jobs(kube_client, namespace, "tight"),
        timeout=60,
    )
    # The pass that sets FitsGPU creates the Job first and patches the status after it.
    fits = wait_until(
        "the tight run's FitsGPU condition",
        lambda: condition(get_run(kube_client, namespace, "tight"), "FitsGPU"),
        timeout=30,
    )
    assert fits["status"] == "True" and fits["reason"] == "GpuMemoryTight", fits
    event = wait_until(
        "a GpuMemoryTight Warning Event",
        lambda: warning(kube_client, namespace, "tight", "GpuMemoryTight"),
        timeout=30,
    )
    assert "95%" in event.message
