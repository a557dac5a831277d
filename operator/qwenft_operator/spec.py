"""The ``QwenFineTune`` spec: one typed model, the source of the CRD's schema.

The training hyper-parameters are the trainer's own config sections
(:mod:`qwenft_trainer.config`: ``lora``, ``quantization``, ``training``, ``deepspeed``,
``checkpoint``, ``evaluation``), embedded as they are, so a field's name, bounds and
default can't differ between a manifest and the trainer config the operator renders from
it. Around them sit the Kubernetes parts (:mod:`sources`, :mod:`workloads`). The CRD is
generated from this module (``python -m qwenft_operator.crd``); cross-field rules live in
:data:`QwenFineTuneSpec.rules`, enforced by the API server (CEL) and by pydantic alike.

    from qwenft_operator.spec import load_manifest
    manifest = load_manifest("examples/lora-single-gpu.yaml")  # a QwenFineTune
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from qwenft_trainer.config import (
    CheckpointSettings,
    DeepSpeedSettings,
    EvaluationSettings,
    LoraSettings,
    Method,
    QuantizationSettings,
    TrainingSettings,
)
from qwenft_trainer.rules import TRAINING_RULES, Rule, format_errors

from qwenft_operator.rules import SpecObject, immutable
from qwenft_operator.sources import DatasetSpec, ModelSpec, OutputSpec
from qwenft_operator.status import QwenFineTuneStatus
from qwenft_operator.workloads import (
    BEST_CHECKPOINT,
    EvaluationPrompt,
    ImagesSpec,
    InferenceSpec,
    MergeSpec,
    ResourcesSpec,
    RunPolicySpec,
    SchedulingSpec,
    ValidationSpec,
)

GROUP = "finetune.qwenft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QwenFineTune"
PLURAL = "qwenfinetunes"
SINGULAR = "qwenfinetune"
SHORT_NAMES = ("qft", "qwenft")
# Run names become label values and prefixes of Service names: a DNS-1035 label.
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
RUN_NAME_MAX_LENGTH = 63
# Fields the API server refuses to change once a run exists (CEL ``self == oldSelf``).
IMMUTABLE_FIELDS = ("model", "dataset", "method")


def _section(description: str, factory: type[BaseModel]) -> Any:
    """A section that defaults to its own defaults, spelled out in the CRD.

    The API server checks a default against the section's CEL rules as it is, without
    filling in nested defaults first, so the CRD's default is the whole object.
    """
    default = factory().model_dump(mode="json", by_alias=True, exclude_none=True)
    return Field(
        default_factory=factory, description=description, json_schema_extra={"default": default}
    )


def _has_evaluation(s: QwenFineTuneSpec) -> bool:
    return s.evaluation.fraction > 0 or s.evaluation.file is not None


def _best_checkpoint(s: QwenFineTuneSpec) -> bool:
    return s.inference.checkpoint == BEST_CHECKPOINT


class QwenFineTuneSpec(SpecObject):
    """What to fine-tune, on what data, how, on which hardware, and how to serve it."""

    rules = (
        *TRAINING_RULES,
        Rule(
            cel="!(has(self.dataset.url) && has(self.evaluation.file))",
            check=lambda s: not (s.dataset.url is not None and s.evaluation.file),
            message="evaluation.file needs a configMap, pvc or path dataset; with a URL "
            "dataset use evaluation.fraction",
            field=".evaluation.file",
        ),
        Rule(
            cel="!has(self.inference.checkpoint) || type(self.inference.checkpoint) == int || "
            "self.evaluation.fraction > 0.0 || has(self.evaluation.file)",
            check=lambda s: not _best_checkpoint(s) or _has_evaluation(s),
            message="inference.checkpoint 'best' picks the checkpoint with the lowest eval "
            "loss: set evaluation.fraction or evaluation.file, or name a step",
            field=".inference.checkpoint",
        ),
        Rule(
            cel="!has(self.inference.checkpoint) || type(self.inference.checkpoint) == int || "
            "self.checkpoint.saveSteps % self.evaluation.steps == 0",
            check=lambda s: (
                not _best_checkpoint(s) or s.checkpoint.save_steps % s.evaluation.steps == 0
            ),
            message="inference.checkpoint 'best' compares the eval loss of saved checkpoints: "
            "set checkpoint.saveSteps to a multiple of evaluation.steps so each one is evaluated",
            field=".checkpoint.saveSteps",
        ),
        Rule(
            cel="!has(self.inference.checkpoint) || self.method != 'full' || "
            "self.inference.engine != 'vllm'",
            check=lambda s: (
                s.inference.checkpoint is None or s.method != "full" or s.inference.engine != "vllm"
            ),
            message="inference.checkpoint of a full fine-tune is resolved by the builtin server "
            "when it starts: use inference.engine builtin, or remove inference.checkpoint",
            field=".inference.checkpoint",
        ),
        Rule(
            cel="size(self.evaluationPrompts) == 0 || self.inference.enabled",
            check=lambda s: not s.evaluation_prompts or s.inference.enabled,
            message="evaluationPrompts test the served endpoint: set inference.enabled",
            field=".evaluationPrompts",
        ),
        Rule(
            cel="!has(self.inference.server) || (self.inference.enabled && self.method != 'full')",
            check=lambda s: (
                s.inference.server is None or (s.inference.enabled and s.method != "full")
            ),
            message="inference.server attaches the run's adapter to a QwenModelServer: it "
            "needs inference.enabled and method lora or qlora",
            field=".inference.server",
        ),
        Rule(
            cel="!has(self.inference.server) || !has(self.inference.checkpoint)",
            check=lambda s: s.inference.server is None or s.inference.checkpoint is None,
            message="a QwenModelServer serves a run's final adapter: remove "
            "inference.checkpoint, or inference.server to serve the checkpoint on its own",
            field=".inference.checkpoint",
        ),
        Rule(
            cel="!has(self.inference.server) || size(self.evaluationPrompts) == 0",
            check=lambda s: s.inference.server is None or not s.evaluation_prompts,
            message="evaluationPrompts test the run's own endpoint; a run attached to a "
            "QwenModelServer has none: remove evaluationPrompts or inference.server",
            field=".evaluationPrompts",
        ),
    )

    model: ModelSpec = immutable("The base model to fine-tune.", "model")
    dataset: DatasetSpec = immutable("The training data.", "dataset")
    method: Method = immutable(
        "lora (adapter over a bf16 base), qlora (adapter over a 4-bit base: bitsandbytes, or "
        "a GPTQ / AWQ checkpoint's own quantization) or full.",
        "method",
        default="lora",
    )
    lora: LoraSettings = _section("LoRA adapter shape (methods lora and qlora).", LoraSettings)
    quantization: QuantizationSettings | None = Field(
        default=None,
        description="4-bit quantization of the base, for method qlora only; unset there, it is "
        "NF4 with double quantization and bf16 compute (on a GPTQ / AWQ base only computeDtype "
        "applies).",
    )
    training: TrainingSettings = _section(
        "Optimisation: epochs or steps, batch, learning rate, sequence length, precision.",
        TrainingSettings,
    )
    deepspeed: DeepSpeedSettings = _section(
        "DeepSpeed ZeRO sharding and CPU offload (otherwise DDP).", DeepSpeedSettings
    )
    checkpoint: CheckpointSettings = _section(
        "How often checkpoints are written and how many are kept; a restarted pod resumes "
        "from the newest complete one.",
        CheckpointSettings,
    )
    evaluation: EvaluationSettings = _section(
        "Held-out evaluation: a fraction of the dataset, or a file next to it (another key of "
        "the same ConfigMap, or a path inside the same claim).",
        EvaluationSettings,
    )
    resources: ResourcesSpec = _section("Nodes, GPUs, CPU and memory of training.", ResourcesSpec)
    scheduling: SchedulingSpec = _section(
        "Placement of every pod: node selector, tolerations, affinity, priority, queue.",
        SchedulingSpec,
    )
    images: ImagesSpec = _section("Container image overrides.", ImagesSpec)
    output: OutputSpec = Field(description="Where checkpoints, the adapter and merges go.")
    validation: ValidationSpec = _section(
        "Placement and deadline of the CPU-only dataset validation pod.", ValidationSpec
    )
    run_policy: RunPolicySpec = _section(
        "Retries, deadlines, scheduling timeout and clean-up of the run's Jobs.", RunPolicySpec
    )
    suspend: bool = Field(
        default=False,
        description="Suspend training (its pods stop); set back to false to resume from the "
        "newest checkpoint.",
    )
    merge: MergeSpec = _section("Merging the adapter into the base after training.", MergeSpec)
    inference: InferenceSpec = _section("Serving the result after training.", InferenceSpec)
    evaluation_prompts: list[EvaluationPrompt] = Field(
        default_factory=list,
        max_length=16,
        description="Smoke test: prompts sent to the endpoint once it is ready; the result "
        "is recorded in status.smokeTest.",
    )

    def cluster_problems(self) -> list[str]:
        """Problems that only matter in a cluster (``qwenft run --local`` accepts these)."""
        problems: list[str] = []
        if self.output.pvc is None:
            problems.append(
                "spec.output.pvc: results must outlive the pods in a cluster; set output.pvc "
                "(output.path is for 'qwenft run --local')"
            )
        return problems


class ObjectMeta(BaseModel):
    """The parts of metadata the spec relies on; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=RUN_NAME_MAX_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="Run name: lower-case letters, digits and '-', starting with a letter.",
    )
    namespace: str | None = Field(default=None, description="Namespace of the run.")
    uid: str | None = Field(default=None, description="Set by the API server.")
    generation: int | None = Field(default=None, description="Set by the API server.")


class QwenFineTune(BaseModel):
    """A whole manifest, as applied with kubectl or run with ``qwenft run --local``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["finetune.qwenft.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["QwenFineTune"]
    metadata: ObjectMeta
    spec: QwenFineTuneSpec
    status: QwenFineTuneStatus | None = None


class ManifestError(ValueError):
    """A manifest file can't be read or is not a valid ``QwenFineTune``."""


def load_manifest(path: str | Path) -> QwenFineTune:
    """Read and validate a ``QwenFineTune`` YAML file; errors list every bad field."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ManifestError(f"can't read {file}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"{file} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ManifestError(f"{file} must hold one QwenFineTune object")
    try:
        return QwenFineTune.model_validate(raw)
    except ValidationError as err:
        lines = "\n".join(f"  {line}" for line in format_errors(err))
        raise ManifestError(f"invalid QwenFineTune {file}:\n{lines}") from err
