"""Manifests a ``QwenFineTune`` must refuse, one case each, shared by two test suites.

The unit tests check that the pydantic spec model rejects every case with a message that
names ``field``; the e2e tests apply the same manifests to a real API server (CRD schema
and CEL rules) and check its error names the same field. Each case is the valid
:data:`BASE_MANIFEST` with ``changes`` applied: dotted paths set to a value, or removed
with :data:`DELETE`. ``strict`` cases are unknown fields, which the API server rejects
only with strict field validation (``kubectl apply --validate=strict``, the default).
:data:`UPDATE_CASES` are valid manifests the API server refuses as *changes* to
:data:`BASE_MANIFEST` (immutable fields).
"""

# ruff: noqa: E501
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

DELETE = object()

BASE_MANIFEST: dict[str, Any] = {
    "apiVersion": "finetune.qwenft.io/v1alpha1",
    "kind": "QwenFineTune",
    "metadata": {"name": "invalid-case"},
    "spec": {
        "model": {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct"}},
        "dataset": {"configMap": {"name": "chats", "key": "train.jsonl"}},
        "output": {"pvc": {"claimName": "runs"}},
        "resources": {"gpusPerNode": 1},
    },
}


@dataclass(frozen=True)
class InvalidCase:
    """One refused manifest: ``field`` is the dotted path the error must name."""

    id: str
    field: str
    changes: dict[str, Any]
    strict: bool = False
    why: str = ""


@dataclass(frozen=True)
class UpdateCase:
    """A valid manifest refused as an update of :data:`BASE_MANIFEST`."""

    id: str
    field: str
    changes: dict[str, Any] = field(default_factory=dict)


def apply_changes(manifest: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``manifest`` with dotted-path ``changes`` applied."""
    out = copy.deepcopy(manifest)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


def build(case: InvalidCase | UpdateCase) -> dict[str, Any]:
    return apply_changes(BASE_MANIFEST, case.changes)


QLORA = {"spec.method": "qlora", "spec.quantization": {"quantType": "nf4"}}

CASES: list[InvalidCase] = [
    # Bounds and enums of the trainer's own sections.
    InvalidCase("lora-rank-zero", "spec.lora.r", {"spec.lora": {"r": 0}}),
    InvalidCase("lora-rank-too-large", "spec.lora.r", {"spec.lora": {"r": 2048}}),
    InvalidCase("lora-alpha-zero", "spec.lora.alpha", {"spec.lora": {"alpha": 0}}),
    InvalidCase("lora-dropout-above-one", "spec.lora.dropout", {"spec.lora": {"dropout": 1.5}}),
    InvalidCase("lora-dropout-negative", "spec.lora.dropout", {"spec.lora": {"dropout": -0.1}}),
    InvalidCase("lora-no-target-modules", "spec.lora.targetModules", {"spec.lora.targetModules": []}),
    InvalidCase("adaptive-without-target-rank", "spec.lora.adaptive.targetRank", {"spec.lora": {"r": 64, "adaptive": {}}}),
    InvalidCase("adaptive-interval-zero", "spec.lora.adaptive.interval", {"spec.lora": {"r": 64, "adaptive": {"targetRank": 16, "interval": 0}}}),
    InvalidCase("adaptive-beta-one", "spec.lora.adaptive.beta1", {"spec.lora": {"r": 64, "adaptive": {"targetRank": 16, "beta1": 1.0}}}),
    InvalidCase("unknown-method", "spec.method", {"spec.method": "dora"}),
    InvalidCase("unknown-precision", "spec.training.precision", {"spec.training.precision": "int8"}),
    InvalidCase("zero-stage-1", "spec.deepspeed.zeroStage", {"spec.deepspeed.zeroStage": 1}),
    InvalidCase("learning-rate-zero", "spec.training.learningRate", {"spec.training.learningRate": 0}),
    InvalidCase("learning-rate-above-one", "spec.training.learningRate", {"spec.training.learningRate": 2.0}),
    InvalidCase("epochs-zero", "spec.training.epochs", {"spec.training.epochs": 0}),
    InvalidCase("max-seq-length-tiny", "spec.training.maxSeqLength", {"spec.training.maxSeqLength": 8}),
    InvalidCase("batch-size-zero", "spec.training.perDeviceBatchSize", {"spec.training.perDeviceBatchSize": 0}),
    InvalidCase("accumulation-zero", "spec.training.gradientAccumulationSteps", {"spec.training.gradientAccumulationSteps": 0}),
    InvalidCase("warmup-above-one", "spec.training.warmupRatio", {"spec.training.warmupRatio": 1.5}),
    InvalidCase("unknown-scheduler", "spec.training.scheduler", {"spec.training.scheduler": "exponential"}),
    InvalidCase("max-steps-below-minus-one", "spec.training.maxSteps", {"spec.training.maxSteps": -5}),
    InvalidCase("save-steps-zero", "spec.checkpoint.saveSteps", {"spec.checkpoint.saveSteps": 0}),
    InvalidCase("keep-zero", "spec.checkpoint.keep", {"spec.checkpoint.keep": 0}),
    InvalidCase("eval-fraction-one", "spec.evaluation.fraction", {"spec.evaluation.fraction": 1.0}),
    InvalidCase("unknown-quant-type", "spec.quantization.quantType", {**QLORA, "spec.quantization": {"quantType": "int4"}}),
    # Bounds and formats of the Kubernetes sections.
    InvalidCase("nodes-zero", "spec.resources.nodes", {"spec.resources.nodes": 0}),
    InvalidCase("gpus-negative", "spec.resources.gpusPerNode", {"spec.resources.gpusPerNode": -1}),
    InvalidCase("gpus-too-many", "spec.resources.gpusPerNode", {"spec.resources.gpusPerNode": 64}),
    InvalidCase("shm-not-a-quantity", "spec.resources.sharedMemorySize", {"spec.resources.sharedMemorySize": "lots"}),
    InvalidCase("cpu-not-a-quantity", "spec.resources.requests.cpu", {"spec.resources.requests": {"cpu": "four"}}),
    InvalidCase("backoff-negative", "spec.runPolicy.backoffLimit", {"spec.runPolicy": {"backoffLimit": -1}}),
    InvalidCase("deadline-zero", "spec.runPolicy.activeDeadlineSeconds", {"spec.runPolicy": {"activeDeadlineSeconds": 0}}),
    InvalidCase("unknown-engine", "spec.inference.engine", {"spec.inference": {"engine": "tgi"}}),
    InvalidCase("replicas-negative", "spec.inference.replicas", {"spec.inference": {"replicas": -1}}),
    InvalidCase("merge-dtype-int8", "spec.merge.dtype", {"spec.merge": {"dtype": "int8"}}),
    InvalidCase("queue-name-with-space", "spec.scheduling.queueName", {"spec.scheduling": {"queueName": "Team A"}}),
    InvalidCase("url-ftp", "spec.dataset.url.url", {"spec.dataset": {"url": {"url": "ftp://host/d.jsonl"}}}),
    InvalidCase("configmap-name-invalid", "spec.dataset.configMap.name", {"spec.dataset.configMap.name": "Chat_Data"}),
    InvalidCase("pvc-absolute-path", "spec.dataset.pvc.path", {"spec.dataset": {"pvc": {"claimName": "d", "path": "/abs.jsonl"}}}),
    InvalidCase("hub-id-with-spaces", "spec.model.hub.id", {"spec.model": {"hub": {"id": "not a model"}}}),
    InvalidCase("served-name-invalid", "spec.inference.servedModelName", {"spec.inference": {"servedModelName": "bad name!"}}),
    InvalidCase("too-many-prompts", "spec.evaluationPrompts", {"spec.evaluationPrompts": [{"prompt": "hi"}] * 17}),
    InvalidCase("empty-prompt", "spec.evaluationPrompts", {"spec.evaluationPrompts": [{"prompt": ""}]}),
    # Required fields.
    InvalidCase("missing-model", "spec.model", {"spec.model": DELETE}),
    InvalidCase("missing-dataset", "spec.dataset", {"spec.dataset": DELETE}),
    InvalidCase("missing-output", "spec.output", {"spec.output": DELETE}),
    InvalidCase("missing-configmap-key", "spec.dataset.configMap.key", {"spec.dataset.configMap.key": DELETE}),
    InvalidCase("missing-pvc-claim", "spec.output.pvc.claimName", {"spec.output": {"pvc": {"path": "x"}}}),
    # One-of sources (CEL exists_one).
    InvalidCase("no-model-source", "spec.model", {"spec.model": {}}),
    InvalidCase("two-model-sources", "spec.model", {"spec.model.path": "/models/qwen"}),
    InvalidCase("no-dataset-source", "spec.dataset", {"spec.dataset": {"format": "auto"}}),
    InvalidCase("two-dataset-sources", "spec.dataset", {"spec.dataset.path": "/data/d.jsonl"}),
    InvalidCase("two-outputs", "spec.output", {"spec.output.path": "/tmp/out"}),
    InvalidCase("no-output", "spec.output", {"spec.output": {}}),
    InvalidCase("cache-without-hub", "spec.model.cache", {"spec.model": {"path": "/m", "cache": {"claimName": "c"}}}),
    InvalidCase("endpoint-with-https-url", "spec.dataset.url.endpoint", {"spec.dataset": {"url": {"url": "https://h/d.jsonl", "endpoint": "https://minio:9000"}}}),
    # Cross-field rules (CEL on spec).
    InvalidCase("quantization-with-lora", "spec.quantization", {"spec.quantization": {"quantType": "nf4"}}),
    InvalidCase("qlora-zero3", "spec.deepspeed.zeroStage", {**QLORA, "spec.deepspeed": {"enabled": True, "zeroStage": 3}}),
    InvalidCase("adaptive-target-not-below-r", "spec.lora.adaptive.targetRank", {"spec.lora": {"r": 16, "adaptive": {"targetRank": 16}}}, why="AdaLoRA prunes from r down to the target"),
    InvalidCase("adaptive-expert-tensors", "spec.lora.targetParameters", {"spec.lora": {"r": 64, "targetParameters": ["mlp.experts.down_proj"], "adaptive": {"targetRank": 16}}}),
    InvalidCase("adaptive-full", "spec.lora.adaptive", {"spec.method": "full", "spec.lora": {"r": 64, "adaptive": {"targetRank": 16}}}),
    InvalidCase("adaptive-deepspeed", "spec.deepspeed.enabled", {"spec.deepspeed": {"enabled": True}, "spec.lora": {"r": 64, "adaptive": {"targetRank": 16}}}),
    InvalidCase("adaptive-schedule-too-long", "spec.lora.adaptive", {"spec.training": {"maxSteps": 100}, "spec.lora": {"r": 64, "adaptive": {"targetRank": 16, "warmupSteps": 50, "finalSteps": 50}}}),
    InvalidCase("qlora-fp32", "spec.training.precision", {**QLORA, "spec.training": {"precision": "fp32"}}),
    InvalidCase("offload-parameters-zero2", "spec.deepspeed.offloadParameters", {"spec.deepspeed": {"enabled": True, "zeroStage": 2, "offloadParameters": True}}),
    InvalidCase("offload-optimizer-without-deepspeed", "spec.deepspeed.offloadOptimizer", {"spec.deepspeed": {"offloadOptimizer": True}}),
    InvalidCase("full-with-modules-to-save", "spec.lora.modulesToSave", {"spec.method": "full", "spec.lora": {"modulesToSave": ["lm_head"]}}),
    InvalidCase("eval-fraction-and-file", "spec.evaluation.file", {"spec.evaluation": {"fraction": 0.1, "file": "eval.jsonl"}}),
    InvalidCase("eval-file-with-url", "spec.evaluation.file", {"spec.dataset": {"url": {"url": "https://h/d.jsonl"}}, "spec.evaluation": {"file": "eval.jsonl"}}),
    InvalidCase("prompts-without-inference", "spec.evaluationPrompts", {"spec.inference": {"enabled": False}, "spec.evaluationPrompts": [{"prompt": "hi"}]}),
    InvalidCase("vllm-without-gpu", "spec.inference.gpus", {"spec.inference": {"engine": "vllm", "gpus": 0}}),
    InvalidCase("checkpoint-step-zero", "spec.inference.checkpoint", {"spec.inference": {"checkpoint": 0}}),
    InvalidCase("checkpoint-not-best", "spec.inference.checkpoint", {"spec.inference": {"checkpoint": "latest"}}),
    InvalidCase("best-checkpoint-without-evaluation", "spec.inference.checkpoint", {"spec.inference": {"checkpoint": "best"}}),
    InvalidCase("best-checkpoint-unevaluated-saves", "spec.checkpoint.saveSteps", {"spec.inference": {"checkpoint": "best"}, "spec.evaluation": {"fraction": 0.1, "steps": 30}, "spec.checkpoint": {"saveSteps": 100}}),
    InvalidCase("checkpoint-full-vllm", "spec.inference.checkpoint", {"spec.method": "full", "spec.inference": {"engine": "vllm", "gpus": 1, "checkpoint": 200}}),
    # spec.inference.server: attach the adapter to a QwenModelServer.
    InvalidCase("server-without-inference", "spec.inference.server", {"spec.inference": {"enabled": False, "server": "shared"}}),
    InvalidCase("server-with-full", "spec.inference.server", {"spec.method": "full", "spec.inference": {"server": "shared"}}),
    InvalidCase("server-with-checkpoint", "spec.inference.checkpoint", {"spec.evaluation": {"fraction": 0.1, "steps": 50}, "spec.checkpoint": {"saveSteps": 100}, "spec.inference": {"server": "shared", "checkpoint": "best"}}),
    InvalidCase("server-with-prompts", "spec.evaluationPrompts", {"spec.inference": {"server": "shared"}, "spec.evaluationPrompts": [{"prompt": "hi"}]}),
    InvalidCase("server-bad-name", "spec.inference.server", {"spec.inference": {"server": "Shared_Server"}}),
    # The run's name: it prefixes Service names and is a label value.
    InvalidCase("name-with-dot", "metadata.name", {"metadata.name": "my.run"}),
    InvalidCase("name-starts-with-digit", "metadata.name", {"metadata.name": "7b-run"}),
    InvalidCase("name-too-long", "metadata.name", {"metadata.name": "r" * 64}),
    # Unknown fields: refused under strict field validation.
    InvalidCase("unknown-lora-field", "spec.lora.rank", {"spec.lora": {"rank": 8}}, strict=True),
    InvalidCase("unknown-spec-field", "spec.gpus", {"spec.gpus": 8}, strict=True),
]  # fmt: skip

UPDATE_CASES: list[UpdateCase] = [
    UpdateCase("change-model", "spec.model", {"spec.model": {"hub": {"id": "Qwen/Qwen2.5-1.5B"}}}),
    UpdateCase("change-dataset", "spec.dataset", {"spec.dataset.configMap.key": "other.jsonl"}),
    UpdateCase("change-method", "spec.method", {"spec.method": "full"}),
]
