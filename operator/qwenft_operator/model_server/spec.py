"""The ``QwenModelServer`` spec: one typed model, the source of the CRD's schema.

A server names one base model (the same :class:`~qwenft_operator.sources.ModelSpec` a
``QwenFineTune`` trains on, so "the same base" is a comparison of two equal objects) and
the adapters to serve over it: runs by name, runs by label selector, or adapter
directories on a claim. Runs can also attach themselves (``QwenFineTune``
``spec.inference.server``). The CRD is generated from this module
(``python -m qwenft_operator.crd --kind QwenModelServer``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from qwenft_trainer.rules import Rule
from qwenft_trainer.vllm_serving import VLLM_MAX_LORA_RANKS

from qwenft_operator.model_server.status import QwenModelServerStatus
from qwenft_operator.rules import SpecObject, count_set, exactly_one
from qwenft_operator.sources import ModelSpec, PvcPath
from qwenft_operator.spec import GROUP, RUN_NAME_MAX_LENGTH, RUN_NAME_PATTERN, VERSION, ObjectMeta
from qwenft_operator.workloads import ContainerResources, Engine, ImagesSpec, SchedulingSpec

KIND = "QwenModelServer"
PLURAL = "qwenmodelservers"
SINGULAR = "qwenmodelserver"
SHORT_NAMES = ("qms",)
API_VERSION = f"{GROUP}/{VERSION}"
MAX_ADAPTERS = 64
# The model name a client sends: what vLLM's --lora-modules and the builtin --adapter accept.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][-._:/A-Za-z0-9]*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]
SOURCES = ("fromFineTune", "selector", "pvc")


class RunSelector(SpecObject):
    """Every ``QwenFineTune`` in the server's namespace with all of these labels."""

    rules = (
        Rule(
            # [.] rather than \. : a backslash is an escape inside a CEL string literal
            cel=f"self.matchLabels.all(k, k.matches('{LABEL_KEY.replace(chr(92) + '.', '[.]')}'))",
            check=lambda s: all(re.fullmatch(LABEL_KEY, key) for key in s.match_labels),
            message="matchLabels keys must be label keys: an optional DNS prefix and '/', then "
            "letters, digits, '-', '_' or '.'",
            field=".matchLabels",
        ),
    )

    match_labels: dict[str, LabelValue] = Field(
        min_length=1,
        max_length=16,
        description="Labels a run must carry (all of them); each matching run's adapter "
        "joins under the run's served model name once the run has one.",
    )


class AdapterSource(SpecObject):
    """One entry of spec.adapters: exactly one of fromFineTune, selector or pvc."""

    rules = (
        Rule(
            cel=exactly_one(*SOURCES),
            check=lambda a: count_set(a, ("from_fine_tune", "selector", "pvc")) == 1,
            message="set exactly one adapter source: fromFineTune, selector or pvc",
        ),
        Rule(
            cel="!has(self.pvc) || (has(self.name) && has(self.rank))",
            check=lambda a: a.pvc is None or (a.name is not None and a.rank is not None),
            message="a pvc adapter needs name (the model name clients send) and rank (its "
            "LoRA rank r, from its adapter_config.json)",
            field=".pvc",
        ),
        Rule(
            cel="!has(self.selector) || !has(self.name)",
            check=lambda a: a.selector is None or a.name is None,
            message="a selector matches many runs, each served under its own served model "
            "name: remove name",
            field=".name",
        ),
        Rule(
            cel="has(self.pvc) || !has(self.rank)",
            check=lambda a: a.pvc is not None or a.rank is None,
            message="rank is read from the run for fromFineTune and selector: remove it",
            field=".rank",
        ),
    )

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=SERVED_NAME_PATTERN,
        description="The model name clients send for this adapter; for fromFineTune it "
        "defaults to the run's served model name (spec.inference.servedModelName or its name).",
    )
    from_fine_tune: str | None = Field(
        default=None,
        min_length=1,
        max_length=RUN_NAME_MAX_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="A QwenFineTune in the server's namespace: its adapter joins once the "
        "run has trained it.",
    )
    selector: RunSelector | None = Field(
        default=None, description="Every QwenFineTune with these labels, added as they finish."
    )
    pvc: PvcPath | None = Field(
        default=None,
        description="A PEFT adapter directory (adapter_config.json + adapter_model."
        "safetensors) inside a claim in the server's namespace, trained on this base.",
    )
    rank: int | None = Field(
        default=None, ge=1, le=4096, description="LoRA rank r of a pvc adapter."
    )


class VllmServerSpec(SpecObject):
    """vLLM's multi-LoRA settings (engine vllm)."""

    rules = (
        Rule(
            cel="!has(self.maxLoras) || !has(self.maxCpuLoras) || "
            "self.maxCpuLoras >= self.maxLoras",
            check=lambda v: (
                v.max_loras is None or v.max_cpu_loras is None or v.max_cpu_loras >= v.max_loras
            ),
            message="maxCpuLoras must be at least maxLoras (vLLM keeps every GPU LoRA in "
            "its CPU cache too)",
            field=".maxCpuLoras",
        ),
    )

    max_loras: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ADAPTERS,
        description="Adapters in one batch (--max-loras); default: every adapter served.",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Adapters kept in CPU memory (--max-cpu-loras); default: every adapter "
        "served, so none is read from disk again.",
    )
    max_lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=VLLM_MAX_LORA_RANKS[-1],
        description="--max-lora-rank; default: the largest adapter's rank rounded up to a "
        "value vLLM accepts. Adapters above it are refused.",
    )


class QwenModelServerSpec(SpecObject):
    """One base model, the adapters served over it, and the server's size."""

    rules = (
        Rule(
            cel="self.engine != 'vllm' || self.gpus >= 1",
            check=lambda s: s.engine != "vllm" or s.gpus >= 1,
            message="engine vllm needs at least one GPU: set gpus >= 1 or engine builtin",
            field=".gpus",
        ),
        Rule(
            cel="!has(self.vllm) || self.engine == 'vllm'",
            check=lambda s: s.vllm is None or s.engine == "vllm",
            message="vllm settings are for engine vllm: remove vllm or set engine: vllm",
            field=".vllm",
        ),
    )

    model: ModelSpec = Field(
        description="The base model every adapter was trained on (hub id + revision + token "
        "Secret, or a claim path): an adapter trained on another base or revision is refused."
    )
    adapters: list[AdapterSource] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description="Adapters to serve. Runs whose spec.inference.server names this server "
        "join as well.",
    )
    engine: Engine = Field(
        default="vllm",
        description="vllm (--enable-lora, one --lora-modules per adapter) or builtin (the "
        "trainer image's server, one --adapter per adapter).",
    )
    vllm: VllmServerSpec | None = Field(default=None, description="vLLM multi-LoRA settings.")
    replicas: int = Field(default=1, ge=0, le=64, description="Server replicas.")
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per server replica.")
    resources: ContainerResources | None = Field(
        default=None, description="CPU and memory of each server replica."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1048576, description="Longest context the server accepts."
    )
    images: ImagesSpec = Field(
        default_factory=ImagesSpec,
        description="Server image (images.server) and pull settings; images.trainer is the "
        "builtin engine's image.",
        json_schema_extra={"default": {}},
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Placement of the server pods.",
        json_schema_extra={"default": {}},
    )


class QwenModelServer(BaseModel):
    """A whole ``QwenModelServer`` manifest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["finetune.qwenft.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["QwenModelServer"]
    metadata: ObjectMeta
    spec: QwenModelServerSpec
    status: QwenModelServerStatus | None = None
