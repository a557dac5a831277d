"""How a run's pods are sized, placed, retried, merged and served.

These are the Kubernetes-specific parts of the ``QwenFineTune`` spec; the training
hyper-parameters come from the trainer's own config sections (see :mod:`spec`). Free-form
Kubernetes objects (tolerations, affinity) are passed through to the pods untouched.

It is over 300 lines because each section's fields carry the descriptions and bounds the CRD
is generated from; the sections belong to one part of the spec.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints
from pydantic.config import JsonDict
from qwenft_trainer.config import Precision
from qwenft_trainer.rules import Rule

from qwenft_operator.rules import SpecObject

# A Kubernetes resource quantity (resource.Quantity's regular expression).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 8, '500m', '64Gi')")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"pattern": QUANTITY_PATTERN}),
]
# An extended resource name such as nvidia.com/gpu or amd.com/gpu.
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[a-z0-9A-Z]([-_.a-z0-9A-Z]*[a-z0-9A-Z])?$"
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}
Engine = Literal["builtin", "vllm"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class ComputeResources(SpecObject):
    """CPU and memory quantities, as in a container's resources."""

    cpu: Quantity | None = Field(default=None, description="CPU cores, e.g. 8 or '500m'.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. '64Gi'.")


class ContainerResources(SpecObject):
    """CPU and memory requests and limits of one container."""

    requests: ComputeResources | None = Field(default=None, description="Guaranteed amounts.")
    limits: ComputeResources | None = Field(default=None, description="Upper bounds.")


class ResourcesSpec(SpecObject):
    """Size of the training job: nodes, GPUs per node, CPU, memory, shared memory."""

    nodes: int = Field(
        default=1, ge=1, le=512, description="Training pods (one per node); torchrun --nnodes."
    )
    gpus_per_node: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per pod and processes per pod (torchrun --nproc-per-node); 0 trains "
        "on the CPU with one process per pod.",
    )
    gpu_resource_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=RESOURCE_NAME,
        description="Extended resource that counts GPUs; defaults to the operator's "
        "QWENFT_GPU_RESOURCE (nvidia.com/gpu).",
    )
    requests: ComputeResources | None = Field(
        default=None, description="CPU and memory requests of each training pod."
    )
    limits: ComputeResources | None = Field(
        default=None, description="CPU and memory limits of each training pod."
    )
    shared_memory_size: Quantity = Field(
        default="8Gi",
        description="Size of /dev/shm (a memory-backed emptyDir) for NCCL and data loaders.",
    )
    gpu_memory: Quantity | None = Field(
        default=None,
        description="Memory of one GPU of the training nodes, e.g. '80Gi', for the GPU-fit "
        "estimate; unset: the smallest nvidia.com/gpu.memory label (GPU Feature Discovery) "
        "of the nodes the node selector matches.",
    )


class SchedulingSpec(SpecObject):
    """Where the pods may run, passed through to every pod the run creates."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods require."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Pod tolerations (core/v1 Toleration), e.g. for tainted GPU nodes.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity (core/v1 Affinity).", json_schema_extra=PRESERVE
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    scheduler_name: str | None = Field(
        default=None, max_length=253, description="Scheduler of the pods (e.g. volcano)."
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue: the Jobs are created suspended with the label "
        "kueue.x-k8s.io/queue-name, and start when Kueue admits them.",
    )


class ImagesSpec(SpecObject):
    """Container images; each defaults to the operator's settings."""

    trainer: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Image running validation, training, merge and the builtin server "
        "(default QWENFT_TRAINER_IMAGE).",
    )
    server: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Image of the inference server: the trainer image for engine builtin, "
        "QWENFT_VLLM_IMAGE for engine vllm.",
    )
    pull_policy: PullPolicy | None = Field(default=None, description="imagePullPolicy.")
    pull_secrets: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16, description="Names of image pull Secrets."
    )


class ValidationSpec(SpecObject):
    """The dataset validation pod: CPU only, so it gets none of ``scheduling``'s placement."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the validation pod requires (scheduling.nodeSelector is for "
        "the GPU pods and does not apply to it).",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations of the validation pod (core/v1 Toleration), e.g. when every "
        "node is tainted.",
    )
    active_deadline_seconds: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="Wall-clock limit of the validation Job, download and tokenization of the "
        "dataset included.",
    )


class RunPolicySpec(SpecObject):
    """Retries, deadlines and clean-up of the run's Jobs."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Pod failures tolerated before the run fails (on several nodes each "
        "failure restarts every rank together); evictions, preemptions and node loss don't "
        "count, and invalid config or data fails at once.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the training Job."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete finished Jobs (not the results) after this."
    )
    scheduling_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=604800,
        description="Fail the run (reason Unschedulable) when a pod of its validation, "
        "training or merge Job stays unschedulable this long, counted from the pod's "
        "PodScheduled condition; the Job is deleted, so a partly scheduled gang releases the "
        "GPUs it holds.",
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="Seconds a stopping training pod (preempted, evicted, drained, deleted, "
        "suspended) gets to finish its step and write a checkpoint before it is killed; "
        "default 300 for lora and qlora, 1800 for full.",
    )


class MergeSpec(SpecObject):
    """Merge the adapter into the base model after training (LoRA and Q-LoRA)."""

    enabled: bool = Field(default=True, description="Run the merge Job after training.")
    dtype: Precision = Field(
        default="bf16", description="Dtype of the merged weights (Q-LoRA merges into this)."
    )
    base: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Un-quantized model to merge into, needed when spec.model is a GPTQ or AWQ "
        "checkpoint (an adapter can't be merged into packed weights): a hub id such as "
        "'Qwen/Qwen2.5-7B-Instruct' for 'Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4', or a directory "
        "the merge pod sees (e.g. /models/<dir> on the model claim). Default: spec.model; the "
        "validation Job refuses a quantized merge target.",
    )
    resources: ContainerResources | None = Field(
        default=None, description="CPU and memory of the merge pod (it needs no GPU)."
    )


# spec.inference.checkpoint: a kept checkpoint's step, or this (the lowest eval loss).
BEST_CHECKPOINT = "best"


def _check_checkpoint(value: int | str) -> int | str:
    if isinstance(value, str) and value != BEST_CHECKPOINT:
        raise ValueError(f"{value!r} is not a step number (e.g. 900) or '{BEST_CHECKPOINT}'")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"checkpoint step {value} must be at least 1 (or '{BEST_CHECKPOINT}')")
    return value


CheckpointChoice = Annotated[
    int | str,
    AfterValidator(_check_checkpoint),
    Field(json_schema_extra={"pattern": f"^{BEST_CHECKPOINT}$"}),
]


class InferenceSpec(SpecObject):
    """Serve the result behind an OpenAI-compatible endpoint once training ends."""

    rules = (
        Rule(
            cel="self.engine != 'vllm' || self.gpus >= 1",
            check=lambda i: i.engine != "vllm" or i.gpus >= 1,
            message="engine vllm needs at least one GPU: set gpus >= 1 or engine builtin",
            field=".gpus",
        ),
        Rule(
            cel="!has(self.checkpoint) || type(self.checkpoint) == string || self.checkpoint >= 1",
            check=lambda i: not isinstance(i.checkpoint, int) or i.checkpoint >= 1,
            message="checkpoint is a step number of at least 1 (e.g. 900) or 'best'",
            field=".checkpoint",
        ),
    )

    enabled: bool = Field(default=True, description="Deploy a server for the result.")
    engine: Engine = Field(
        default="builtin",
        description="builtin (the trainer image's server) or vllm (merged model, or the "
        "adapter with --enable-lora when vLLM can load it).",
    )
    replicas: int = Field(default=1, ge=0, le=64, description="Server replicas.")
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per server replica.")
    resources: ContainerResources | None = Field(
        default=None, description="CPU and memory of each server replica."
    )
    served_model_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-._:/A-Za-z0-9]*$",
        description="Model name clients send in requests; defaults to the run's name.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1048576, description="Longest context the server accepts."
    )
    checkpoint: CheckpointChoice | None = Field(
        default=None,
        description="Serve (and merge) a kept checkpoint instead of the final adapter or "
        "weights: its step (e.g. 900), or 'best', the kept checkpoint with the lowest eval "
        "loss (needs evaluation). Resolved when the merge Job or the server starts; a "
        "checkpoint that isn't kept fails the run (CheckpointNotFound) with the list of "
        "those that are.",
    )
    server: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="A QwenModelServer in the run's namespace: the finished adapter joins it "
        "(served under servedModelName) instead of getting a Deployment of its own; the "
        "run's engine, replicas and gpus are then unused.",
    )


class EvaluationPrompt(SpecObject):
    """One smoke-test request sent to the endpoint after it becomes ready."""

    prompt: str = Field(min_length=1, max_length=8192, description="User message to send.")
    expect_contains: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Text the answer must contain for the test to pass.",
    )
    max_tokens: int = Field(default=64, ge=1, le=4096, description="Tokens to generate.")
