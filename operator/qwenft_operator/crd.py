"""Generate the CustomResourceDefinitions (``QwenFineTune``, ``QwenModelServer``) from the
pydantic specs and statuses.

The CRD is never edited by hand: the pydantic models are the one source of truth, and a
test fails when the committed file differs from what this module prints. The JSON schema
pydantic emits is turned into a Kubernetes *structural* schema: ``$ref`` inlined,
``Optional`` unwrapped (absent instead of null), ``int | str`` made
``x-kubernetes-int-or-string``, free-form objects marked
``x-kubernetes-preserve-unknown-fields`` on that field only, and the models' cross-field
rules emitted as CEL ``x-kubernetes-validations``.

    python -m qwenft_operator.crd -o crds/finetune.qwenft.io_qwenfinetunes.yaml
    python -m qwenft_operator.crd --check crds/finetune.qwenft.io_qwenfinetunes.yaml
    python -m qwenft_operator.crd --kind QwenModelServer \
        -o crds/finetune.qwenft.io_qwenmodelservers.yaml

It is over 300 lines because turning pydantic's JSON schema into a structural Kubernetes
schema takes several passes (refs, defaults, nullables, CEL) that only make sense together.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from qwenft_operator import spec as spec_module
from qwenft_operator.model_server import spec as server_spec
from qwenft_operator.model_server.status import QwenModelServerStatus
from qwenft_operator.spec import QwenFineTuneSpec
from qwenft_operator.status import QwenFineTuneStatus

CRD_PATH = "crds/finetune.qwenft.io_qwenfinetunes.yaml"
MODEL_SERVER_CRD_PATH = "crds/finetune.qwenft.io_qwenmodelservers.yaml"
_DROPPED = {"title", "$defs"}
# Key order in the emitted YAML: the description first, so the file reads like the docs.
_ORDER = [
    "description", "type", "format", "enum", "default", "nullable",
    "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "x-kubernetes-int-or-string", "anyOf", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "items", "additionalProperties", "required", "properties", "x-kubernetes-validations",
]  # fmt: skip

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "One-word summary of where the run is."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.display",
     "description": "Optimizer steps done / planned."},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss",
     "description": "Training loss at the last logging step."},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether the endpoint serves the fine-tuned model."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint.url",
     "description": "In-cluster URL of the OpenAI-compatible API."},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method", "priority": 1,
     "description": "lora, qlora or full."},
    {"name": "Reason", "type": "string", "priority": 1,
     "jsonPath": '.status.conditions[?(@.type=="Failed")].reason',
     "description": "Why the run failed, when it did."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
     "description": "Time since the run was created."},
]  # fmt: skip

MODEL_SERVER_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "One-word summary of the server."},
    {"name": "Adapters", "type": "string", "jsonPath": ".status.adaptersDisplay",
     "description": "Adapters serving / asked for."},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether every replica serves the current adapter set."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint.url",
     "description": "In-cluster URL of the OpenAI-compatible API."},
    {"name": "Engine", "type": "string", "jsonPath": ".spec.engine", "priority": 1,
     "description": "vllm or builtin."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
     "description": "Time since the server was created."},
]  # fmt: skip

NAME_RULE = {
    "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && "
    "size(self.metadata.name) <= 63",
    "message": "metadata.name must be at most 63 lower-case letters, digits and '-', "
    "starting with a letter: it names the run's Services and label values",
}


class SchemaError(ValueError):
    """The pydantic schema has a construct with no structural Kubernetes equivalent."""


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A structural Kubernetes schema for one pydantic JSON-schema node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        return _merge(structural(target, defs, where), node, defs, where)
    if "allOf" in node and len(node["allOf"]) == 1:
        return _merge(structural(node.pop("allOf")[0], defs, where), node, defs, where)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            return _merge(structural(options[0], defs, where), node, defs, where)
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            pattern = next((o["pattern"] for o in options if "pattern" in o), None)
            node = {**node, "x-kubernetes-int-or-string": True}
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if pattern and "pattern" not in node:
                node["pattern"] = pattern
        else:
            raise SchemaError(f"{where or 'root'}: anyOf {options} has no structural form")
    return _tidy(node, defs, where)


def _merge(
    base: dict[str, Any], extra: dict[str, Any], defs: dict[str, Any], where: str
) -> dict[str, Any]:
    """The referenced schema with the referring field's own keys laid over it."""
    merged = dict(base)
    rules = list(base.get("x-kubernetes-validations", []))
    for key, value in _tidy(extra, defs, where, top_only=True).items():
        if key == "x-kubernetes-validations":
            rules.extend(value)
        elif key == "description" and base.get("description", value) != value:
            merged[key] = f"{value}\n\n{base['description']}"
        else:
            merged[key] = value
    if rules:
        merged["x-kubernetes-validations"] = rules
    return _ordered(merged)


def _tidy(
    node: dict[str, Any], defs: dict[str, Any], where: str, *, top_only: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "additionalProperties":
            if value is False:
                continue  # unknown keys are pruned or rejected by kubectl's field validation
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
            value = structural(value, defs, f"{where}.*")
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            value = True
        elif key == "const":
            key, value = "enum", [value]
        elif key == "properties" and not top_only:
            value = {name: structural(sub, defs, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items" and not top_only:
            value = structural(value, defs, f"{where}[]")
        out[key] = value
    if out.get("type") == "object" and out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("properties", None)
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    if "x-kubernetes-validations" in node:
        keys = ("rule", "message", "fieldPath", "reason")
        node["x-kubernetes-validations"] = [
            {key: rule[key] for key in keys if key in rule}
            for rule in node["x-kubernetes-validations"]
        ]
    rank = {key: i for i, key in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a pydantic model, camelCase keys."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    for cls in _models(model):
        node = raw if cls is model else defs.get(cls.__name__)
        if node is not None:
            _add_factory_defaults(cls, node)
    return structural(raw, defs, "")


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every model class its fields refer to."""
    found: list[type[BaseModel]] = []
    pending = [model]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.append(cls)
        for field in cls.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    pending.append(arg)
    return found


def _type_args(annotation: Any) -> list[Any]:
    args = [annotation]
    for arg in typing.get_args(annotation):
        args.extend(_type_args(arg))
    return args


def _add_factory_defaults(cls: type[BaseModel], node: dict[str, Any]) -> None:
    """Defaults made by ``default_factory`` (lists, maps) written into the schema, so the
    API server fills them in too and CEL rules can rely on them. Sections (models) keep
    the ``default: {}`` their field declares."""
    for name, field in cls.model_fields.items():
        prop = node.get("properties", {}).get(field.alias or name)
        if prop is None or field.default_factory is None or "default" in prop:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if not isinstance(value, BaseModel):
            prop["default"] = to_jsonable_python(value)


@dataclass(frozen=True)
class CrdKind:
    """One kind's names, models and columns: everything that differs between the CRDs."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: list[dict[str, Any]]
    path: str
    noun: str  # what one object is called in descriptions


FINE_TUNE = CrdKind(
    kind=spec_module.KIND,
    plural=spec_module.PLURAL,
    singular=spec_module.SINGULAR,
    short_names=spec_module.SHORT_NAMES,
    description="A fine-tune of a Qwen-family model: validate the data, train with LoRA, "
    "Q-LoRA or in full, merge, and serve behind an OpenAI-compatible endpoint.",
    spec=QwenFineTuneSpec,
    status=QwenFineTuneStatus,
    printer_columns=PRINTER_COLUMNS,
    path=CRD_PATH,
    noun="run",
)
MODEL_SERVER = CrdKind(
    kind=server_spec.KIND,
    plural=server_spec.PLURAL,
    singular=server_spec.SINGULAR,
    short_names=server_spec.SHORT_NAMES,
    description="One Qwen base model served with many LoRA adapters (from QwenFineTune runs "
    "or a claim) behind one OpenAI-compatible endpoint; each adapter is a model name.",
    spec=server_spec.QwenModelServerSpec,
    status=QwenModelServerStatus,
    printer_columns=MODEL_SERVER_PRINTER_COLUMNS,
    path=MODEL_SERVER_CRD_PATH,
    noun="server",
)
KINDS = {k.kind: k for k in (FINE_TUNE, MODEL_SERVER)}


def build_crd(kind: CrdKind = FINE_TUNE) -> dict[str, Any]:
    """The whole CustomResourceDefinition object of ``kind``."""
    root = {
        "description": kind.description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": spec_module.API_VERSION, "type": "string"},
            "kind": {"description": kind.kind, "type": "string"},
            "metadata": {
                # The API server allows nothing here but restrictions on name/generateName.
                "type": "object",
                "properties": {
                    "name": {
                        "description": f"Name of the {kind.noun}; it prefixes its children's "
                        "names.",
                        "type": "string",
                        "maxLength": spec_module.RUN_NAME_MAX_LENGTH,
                    }
                },
            },
            "spec": model_schema(kind.spec),
            "status": model_schema(kind.status),
        },
        "x-kubernetes-validations": [NAME_RULE],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{spec_module.GROUP}"},
        "spec": {
            "group": spec_module.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": spec_module.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.printer_columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd(kind: CrdKind = FINE_TUNE) -> str:
    """The CRD as the YAML text committed in ``crds/``."""
    flag = "" if kind is FINE_TUNE else f" --kind {kind.kind}"
    header = (
        f"# Generated by `python -m qwenft_operator.crd{flag}`: edit the pydantic models in\n"
        "# operator/qwenft_operator/ instead, then regenerate.\n"
        f"# kubectl apply --server-side -f {kind.path}\n"
    )
    body = yaml.dump(
        build_crd(kind), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    return header + body


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a CRD of qwenft as YAML.")
    parser.add_argument("--kind", choices=sorted(KINDS), default=FINE_TUNE.kind,
                        help="which CRD (default QwenFineTune)")  # fmt: skip
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.add_argument(
        "--check", metavar="FILE", help="exit 1 if FILE differs from the generated CRD"
    )
    args = parser.parse_args(argv)
    kind = KINDS[args.kind]
    text = render_crd(kind)
    if args.check:
        with open(args.check, encoding="utf-8") as current:
            if current.read() != text:
                flag = "" if kind is FINE_TUNE else f" --kind {kind.kind}"
                print(f"{args.check} is stale: run python -m qwenft_operator.crd{flag} "
                      f"-o {args.check}")  # fmt: skip
                return 1
        return 0
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
