"""The fake nodes kwok runs: GPU nodes with GPU-feature-discovery labels and one CPU node.

Names, labels and capacities here are what the operator's e2e tests can rely on:
  gpu-node-0, gpu-node-1   nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3
  gpu-node-2, gpu-node-3   nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB
  cpu-node-0               no GPUs
Each GPU node has nvidia.com/gpu: 8, 96 CPUs and 1 TiB of memory; nodes carry no taints.
"""

from __future__ import annotations

from typing import Any

GPU_PRODUCTS = (
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-A100-SXM4-80GB",
)
GPU_MEMORY_MIB = {"NVIDIA-H100-80GB-HBM3": "81559", "NVIDIA-A100-SXM4-80GB": "81920"}
GPUS_PER_NODE = 8
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def build_node(name: str, *, labels: dict[str, str], capacity: dict[str, str]) -> dict[str, Any]:
    """A Node object that kwok manages, created with its capacity already in status."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def build_nodes(gpu_nodes: int = 4) -> list[dict[str, Any]]:
    """gpu_nodes GPU nodes (H100 then A100, alternating in pairs) and one CPU-only node."""
    nodes = []
    for i in range(gpu_nodes):
        product = GPU_PRODUCTS[i % len(GPU_PRODUCTS)]
        nodes.append(
            build_node(
                f"gpu-node-{i}",
                labels={
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": product,
                    "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                    "nvidia.com/gpu.memory": GPU_MEMORY_MIB[product],
                    "node.kubernetes.io/instance-type": "kwok-gpu-8x",
                },
                capacity={
                    "cpu": "96",
                    "memory": "1Ti",
                    "pods": "110",
                    "ephemeral-storage": "2Ti",
                    "nvidia.com/gpu": str(GPUS_PER_NODE),
                },
            )
        )
    nodes.append(
        build_node(
            "cpu-node-0",
            labels={"node.kubernetes.io/instance-type": "kwok-cpu"},
            capacity={"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "1Ti"},
        )
    )
    return nodes
