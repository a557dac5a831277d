"""The base of the operator's spec models, which carries their cross-field rules to the CRD.

A ``QwenFineTune`` is checked by the Kubernetes API server (CEL ``x-kubernetes-validations``
in the generated CRD) and by the operator and ``qwenft run --local`` (the pydantic spec
model). Both read the same :class:`~qwenft_trainer.rules.Rule` objects (the CEL expression
and its Python mirror, one message, one field path), defined in the trainer for what a spec
shares with a training config and beside each spec model for the rest. Spec models derive
from :class:`SpecObject`; the CRD generator reads their rules through the JSON schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from qwenft_trainer.rules import Rule, broken

VALIDATIONS_KEY = "x-kubernetes-validations"


def _schema_extra(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema[VALIDATIONS_KEY] = [rule.to_crd() for rule in rules]


class SpecObject(BaseModel):
    """Base of every object in the ``QwenFineTune`` spec and status.

    Keys are camelCase on the wire (snake_case attributes in Python), unknown keys are
    errors, and the class's :attr:`rules` are checked after field validation.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        json_schema_extra=_schema_extra,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> SpecObject:
        failed = broken(self, self.rules)
        if failed:
            raise ValueError("\n".join(rule.describe(self) for rule in failed))
        return self


def immutable(description: str, what: str, **kwargs: Any) -> Any:
    """A pydantic ``Field`` the API server refuses to change once the run exists."""
    rule: JsonDict = {
        "rule": "self == oldSelf",
        "message": f"{what} is immutable; create a new run",
    }
    return Field(description=description, json_schema_extra={VALIDATIONS_KEY: [rule]}, **kwargs)


def exactly_one(*names: str) -> str:
    """CEL: exactly one of the optional fields ``names`` is set."""
    return "[" + ", ".join(f"has(self.{name})" for name in names) + "].exists_one(x, x)"


def count_set(obj: BaseModel, names: Iterable[str]) -> int:
    """How many of the fields ``names`` (snake_case) are set (not None) on ``obj``."""
    return sum(getattr(obj, name) is not None for name in names)


def format_errors(err: ValidationError, *, prefix: str = "") -> list[str]:
    """One ``dotted.field.path: message`` line per problem, in the CRD's camelCase names.

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
