"""Cross-field rules of a training run, written once for the trainer and the operator.

A :class:`Rule` holds one rule in both of its forms side by side: the CEL expression the
Kubernetes API server checks (``x-kubernetes-validations`` in the generated CRD) and the same
test in Python, with one message and one field path, so the API server, the operator and
``qwenft train`` can't tell a user different things. :data:`TRAINING_RULES` are the rules
over the sections a ``QwenFineTune`` spec and a :class:`~qwenft_trainer.config.TrainConfig`
share (``method``, ``quantization``, ``lora``, ``training``, ``deepspeed``, ``evaluation``):
``TrainConfig`` checks them, and the operator's spec checks them plus its own
(serving, datasets by URL). Field names are the CRD's camelCase; a trainer file accepts
those keys too.

    class Run(Section):
        rules = TRAINING_RULES          # checked after the fields; errors name the field
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """One cross-field rule.

    ``cel`` is the CEL expression (``self`` is the object the rule sits on); ``check`` is
    the same test in Python, returning True when the object is valid; ``field`` is the
    path of the field to blame relative to that object (``.quantization``), as CEL's
    ``fieldPath``; ``message`` says how to fix it. ``explain``, where a rule has one, gives
    the Python side a message with the object's own numbers (CEL messages are fixed text).
    """

    cel: str
    check: Callable[[Any], bool]
    message: str
    field: str = ""
    explain: Callable[[Any], str] | None = None

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = self.field
        return out

    def describe(self, obj: Any = None) -> str:
        """``field: message`` (about ``obj``, when the rule can say more), as errors read."""
        message = self.explain(obj) if self.explain is not None and obj is not None else ""
        message = message or self.message
        return f"{self.field.lstrip('.')}: {message}" if self.field else message


def broken(obj: Any, rules: Iterable[Rule]) -> list[Rule]:
    """The rules ``obj`` breaks, in order."""
    return [rule for rule in rules if not rule.check(obj)]


class Section(BaseModel):
    """Base of every settings object of a run: the trainer's config and the operator's spec.

    Keys are camelCase on the wire (the CRD) or snake_case (trainer files, Python), unknown
    keys are errors, and the class's :attr:`rules` are checked after its fields, all of the
    broken ones reported, one line each.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        failed = broken(self, self.rules)
        if failed:
            raise ValueError("\n".join(rule.describe(self) for rule in failed))
        return self


def format_errors(err: ValidationError, *, prefix: str = "") -> list[str]:
    """One ``dotted.field.path: message`` line per problem.

    Rule messages that start with a field path (``quantization: ...``) are joined onto
    the location of the object they sit on, so ``spec`` + ``quantization`` reads
    ``spec.quantization``.
    """
    lines: list[str] = []
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        if prefix:
            loc.insert(0, prefix)
        message = str(item["msg"]).removeprefix("Value error, ")
        for line in message.split("\n"):
            head, sep, tail = line.partition(": ")
            if sep and head and " " not in head:
                lines.append(".".join([*loc, head]) + ": " + tail)
            else:
                lines.append((".".join(loc) or "(top level)") + ": " + line)
    return lines


def _zero3(s: Any) -> bool:
    return bool(s.deepspeed.enabled and s.deepspeed.zero_stage == 3)


def _adaptive_schedule_problem(s: Any) -> str:
    adaptive = s.lora.adaptive
    steps = s.training.max_steps
    if adaptive is None or steps <= 0:
        return ""
    return str(adaptive.schedule_problem(steps, source="training.maxSteps") or "")


TRAINING_RULES: tuple[Rule, ...] = (
    Rule(
        cel="!has(self.quantization) || self.method == 'qlora'",
        check=lambda s: s.quantization is None or s.method == "qlora",
        message="quantization is only for method qlora: remove it or set method: qlora",
        field=".quantization",
    ),
    Rule(
        cel="!(self.method == 'qlora' && self.deepspeed.enabled && self.deepspeed.zeroStage == 3)",
        check=lambda s: not (s.method == "qlora" and _zero3(s)),
        message="ZeRO-3 can't shard 4-bit Q-LoRA weights: use zeroStage 2, or method lora",
        field=".deepspeed.zeroStage",
    ),
    Rule(
        cel="self.method != 'qlora' || self.training.precision != 'fp32'",
        check=lambda s: s.method != "qlora" or s.training.precision != "fp32",
        message="method qlora trains in bf16 or fp16, not fp32",
        field=".training.precision",
    ),
    Rule(
        cel="!self.deepspeed.offloadParameters || "
        "(self.deepspeed.enabled && self.deepspeed.zeroStage == 3)",
        check=lambda s: not s.deepspeed.offload_parameters or _zero3(s),
        message="offloadParameters needs deepspeed.enabled and zeroStage 3",
        field=".deepspeed.offloadParameters",
    ),
    Rule(
        cel="!self.deepspeed.offloadOptimizer || "
        "(self.deepspeed.enabled && self.deepspeed.zeroStage >= 2)",
        check=lambda s: (
            not s.deepspeed.offload_optimizer
            or (s.deepspeed.enabled and s.deepspeed.zero_stage >= 2)
        ),
        message="offloadOptimizer needs deepspeed.enabled and zeroStage 2 or 3",
        field=".deepspeed.offloadOptimizer",
    ),
    Rule(
        cel="!(self.training.kernels == 'liger' && self.deepspeed.enabled && "
        "self.deepspeed.zeroStage == 3)",
        check=lambda s: not (s.training.kernels == "liger" and _zero3(s)),
        message="Liger's fused loss reads the output head's weight, which ZeRO-3 partitions: "
        "use kernels auto (the chunked loss there) or zeroStage 2",
        field=".training.kernels",
    ),
    Rule(
        cel="self.method != 'full' || size(self.lora.modulesToSave) == 0",
        check=lambda s: s.method != "full" or not s.lora.modules_to_save,
        message="method full trains every module; remove lora.modulesToSave",
        field=".lora.modulesToSave",
    ),
    Rule(
        cel="!has(self.lora.adaptive) || self.lora.adaptive.targetRank < self.lora.r",
        check=lambda s: s.lora.adaptive is None or s.lora.adaptive.target_rank < s.lora.r,
        message="lora.adaptive starts every matrix at lora.r and prunes to targetRank: "
        "set targetRank below lora.r (raise lora.r to the largest rank a matrix may keep)",
        field=".lora.adaptive.targetRank",
    ),
    Rule(
        cel="!has(self.lora.adaptive) || !has(self.lora.targetParameters) || "
        "size(self.lora.targetParameters) == 0",
        check=lambda s: s.lora.adaptive is None or not s.lora.target_parameters,
        message="lora.adaptive (AdaLoRA) adapts linear modules only, not fused expert "
        "tensors: set lora.targetParameters: [] or remove lora.adaptive",
        field=".lora.targetParameters",
    ),
    Rule(
        cel="!has(self.lora.adaptive) || self.method != 'full'",
        check=lambda s: s.lora.adaptive is None or s.method != "full",
        message="method full trains no adapter: remove lora.adaptive or use lora / qlora",
        field=".lora.adaptive",
    ),
    Rule(
        cel="!has(self.lora.adaptive) || !self.deepspeed.enabled",
        check=lambda s: s.lora.adaptive is None or not s.deepspeed.enabled,
        message="lora.adaptive scores ranks by the gradients, which DeepSpeed clears "
        "inside backward: set deepspeed.enabled: false (DDP) or remove lora.adaptive",
        field=".deepspeed.enabled",
    ),
    Rule(
        cel="!has(self.lora.adaptive) || self.training.maxSteps <= 0 || [self.lora.adaptive]"
        ".all(a, a.warmupSteps + a.finalSteps + a.interval <= self.training.maxSteps)",
        check=lambda s: not _adaptive_schedule_problem(s),
        message="lora.adaptive's schedule must fit training.maxSteps: warmupSteps + "
        "finalSteps + interval at most maxSteps, so the ranks are pruned at least once",
        field=".lora.adaptive",
        explain=_adaptive_schedule_problem,
    ),
    Rule(
        cel="!(self.evaluation.fraction > 0.0 && has(self.evaluation.file))",
        check=lambda s: not (s.evaluation.fraction > 0 and s.evaluation.file),
        message="set evaluation.fraction or evaluation.file, not both",
        field=".evaluation.file",
    ),
)
