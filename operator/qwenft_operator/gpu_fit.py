"""The GPU-fit check of a run: its memory estimate against the GPUs it targets (FitsGPU).

Once validation passed, and before the training Job (the first child that asks for GPUs)
exists, the run's per-GPU memory estimate (:mod:`qwenft_trainer.fit_estimate`) is compared
with one GPU's memory. The model's shape comes from the ``config.json`` the validation pod
read (its termination message carries the shape fields), else from the table of known hub
checkpoints; the GPU memory from ``spec.resources.gpuMemory``, else from the GPU Feature
Discovery label ``nvidia.com/gpu.memory`` (MiB) of the nodes the run's node selector
matches, the smallest of them. Then

- it can't fit: ``FitsGPU`` False (``GpuMemoryExceeded``) with the estimate, the limit and
  the single changes that would fit; the run fails before any GPU is requested;
- it is within 10 % of the limit: ``FitsGPU`` True (``GpuMemoryTight``) and a Warning Event;
- it fits: ``FitsGPU`` True (``GpuMemoryFits``) with the estimate;
- the memory or the shape is unknown: ``FitsGPU`` Unknown (``GpuMemoryUnknown``), and the
  run goes on.

Pure: the node labels are looked up by :func:`qwenft_operator.kube.node_labels`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity
from qwenft_trainer.fit_estimate import estimate_memory, fixes_that_fit, gib, judge
from qwenft_trainer.model_shapes import ModelShape, ShapeError, known_config

from qwenft_operator import conditions as cond
from qwenft_operator.actions import EmitEvent
from qwenft_operator.builders.config import build_train_config
from qwenft_operator.draft import Draft
from qwenft_operator.parsed_run import Run

# GPU Feature Discovery's label: the memory of each GPU of the node, in MiB.
GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
MIB = 2**20
# The key of the shape fields in the validator's JSON report (qwenft_trainer.validate).
REPORT_KEY = "base_config"


@dataclass(frozen=True)
class GpuMemory:
    """The memory of one GPU of the run's nodes, and where that number comes from."""

    bytes: int
    source: str


def spec_gpu_memory(run: Run) -> GpuMemory | None:
    """``spec.resources.gpuMemory`` in bytes, or None when unset."""
    value = run.spec.resources.gpu_memory
    if value is None:
        return None
    return GpuMemory(int(parse_quantity(value)), f"spec.resources.gpuMemory {value}")


def needs_node_lookup(run: Run) -> bool:
    """Whether the check needs the nodes' labels (a GPU run without spec.resources.gpuMemory)."""
    resources = run.spec.resources
    return resources.gpus_per_node > 0 and resources.gpu_memory is None


def gpu_memory_of_nodes(labels: Iterable[Mapping[str, str]]) -> GpuMemory | None:
    """The smallest ``nvidia.com/gpu.memory`` of the nodes (None if none carries it)."""
    sizes = []
    for node in labels:
        value = str(node.get(GFD_MEMORY_LABEL) or "")
        if value.isdigit():
            sizes.append(int(value))
    if not sizes:
        return None
    smallest = min(sizes)
    return GpuMemory(
        smallest * MIB,
        f"node label {GFD_MEMORY_LABEL}={smallest} (MiB), smallest of {len(sizes)} node(s)",
    )


def reported_model_config(report: str) -> dict[str, Any] | None:
    """The shape fields of ``config.json`` in the validator's termination message."""
    try:
        parsed = json.loads(report)
    except ValueError:
        return None
    found = parsed.get(REPORT_KEY) if isinstance(parsed, dict) else None
    return found if isinstance(found, dict) else None


def model_config_of(run: Run, reported: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The model's config fields and their source: the validator's report, else the table."""
    if reported is not None:
        return reported, "the model's config.json"
    hub = run.spec.model.hub
    known = known_config(hub.id) if hub is not None else None
    if known is not None and hub is not None:
        return known, f"the known shape of {hub.id}"
    return None, ""


@dataclass(frozen=True)
class FitCheck:
    """The FitsGPU condition to set, and whether the run fails or gets a warning."""

    status: cond.ConditionStatus
    reason: str
    message: str

    @property
    def fails(self) -> bool:
        return self.status == "False"

    @property
    def tight(self) -> bool:
        return self.reason == cond.GPU_MEMORY_TIGHT


def check_fit(run: Run, model_config: dict[str, Any] | None, memory: GpuMemory | None) -> FitCheck:
    """The verdict on ``run`` given the model's config fields and one GPU's memory."""
    unknown = cond.GPU_MEMORY_UNKNOWN
    if model_config is None:
        return FitCheck(
            "Unknown", unknown, "the model's shape is not known (no config.json was reported)"
        )
    resources = run.spec.resources
    gpus = resources.nodes * resources.gpus_per_node
    try:
        shape = ModelShape.from_config(model_config)
        train = build_train_config(run)
        estimate = estimate_memory(shape, train, gpus)
    except (ShapeError, ValueError) as err:
        return FitCheck("Unknown", unknown, f"no estimate: {err}")
    if memory is None:
        message = (
            f"needs {estimate.summary()}; the GPU memory is unknown: set "
            f"spec.resources.gpuMemory or label the nodes {GFD_MEMORY_LABEL} (GPU Feature "
            "Discovery)"
        )
        return FitCheck("Unknown", unknown, message)
    fixes = fixes_that_fit(shape, train, gpus, memory.bytes)
    verdict = judge(estimate, memory.bytes, fixes=fixes)
    where = f" ({memory.source}; {gpus} GPU(s))"
    if verdict.status == "too-large":
        return FitCheck("False", cond.GPU_MEMORY_EXCEEDED, verdict.message + where)
    reason = cond.GPU_MEMORY_TIGHT if verdict.status == "tight" else cond.GPU_MEMORY_FITS
    message = verdict.message + where
    if verdict.status == "tight":
        message += f"; within {gib(memory.bytes - estimate.total)} GiB of the limit"
    return FitCheck("True", reason, message)


def gate(d: Draft, run: Run, report: str, memory: GpuMemory | None) -> bool:
    """Set FitsGPU; False (and the run Failed) when it can't fit. CPU runs pass unchecked."""
    if run.spec.resources.gpus_per_node == 0:
        return True
    memory = spec_gpu_memory(run) or memory
    model_config, _ = model_config_of(run, reported_model_config(report) if report else None)
    check = check_fit(run, model_config, memory)
    if check.fails:
        d.set(cond.VALIDATED, "False", cond.GPU_MEMORY_EXCEEDED, check.message)
        d.fail(cond.FITS_GPU, check.reason, check.message)
        return False
    before = cond.get_condition(d.status.conditions, cond.FITS_GPU)
    if check.tight and (before is None or before.reason != cond.GPU_MEMORY_TIGHT):
        d.actions.append(EmitEvent("Warning", cond.GPU_MEMORY_TIGHT, check.message))
    d.set(cond.FITS_GPU, check.status, check.reason, check.message)
    return True
