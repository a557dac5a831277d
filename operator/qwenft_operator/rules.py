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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from qwenft_trainer.rules import Rule, Section

VALIDATIONS_KEY = "x-kubernetes-validations"


def _schema_extra(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema[VALIDATIONS_KEY] = [rule.to_crd() for rule in rules]


class SpecObject(Section):
    """Base of every object in the ``QwenFineTune`` spec and status: the trainer's
    :class:`~qwenft_trainer.rules.Section` (camelCase keys, unknown keys refused, its rules
    checked), whose rules the CRD generator also finds as CEL in the JSON schema."""

    model_config = ConfigDict(json_schema_extra=_schema_extra)


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
