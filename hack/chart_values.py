"""The chart's values.yaml read with its comments: one source for the schema and the README.

Each key of ``charts/qwenft-operator/values.yaml`` carries its documentation in the comment
block right above it, in helm-docs' convention, and its constraints in helm-schema's:

    # -- Port of the operator's Prometheus /metrics endpoint.    <- description
    # @schema
    # minimum: 1                                                  <- JSON-schema keywords,
    # maximum: 65535                                                 merged into the key's node
    # @schema
    metricsPort: 8080

A comment block without ``--`` over a mapping (a section heading) is that mapping's
description. The type comes from the default value unless the ``@schema`` block gives one;
a mapping whose block gives ``properties`` or ``additionalProperties`` is described whole by
the block, and its default's keys are data (``resources``), not settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "qwenft-operator"
VALUES = CHART / "values.yaml"
SCHEMA_FILE = CHART / "values.schema.json"
TITLE = "qwenft-operator chart values"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*):(?: |$)")
SCHEMA_MARK = "@schema"
# Helm's key for values shared with parent charts: every chart may receive it.
GLOBAL = {
    "type": "object",
    "description": "Values shared with parent charts (unused by this chart).",
}


class ValuesError(ValueError):
    """values.yaml has a comment block the generator can't read; names the line."""


@dataclass
class Setting:
    """One key of values.yaml with what its comment block says about it."""

    key: str
    line: int
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    children: list[Setting] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        """The ``@schema`` block describes the whole mapping; its keys are not settings."""
        return "properties" in self.schema or "additionalProperties" in self.schema


def _read_block(comments: list[tuple[int, str]]) -> tuple[str, dict[str, Any]]:
    """(description, schema keywords) from the comment block over one key."""
    prose: list[str] = []
    schema_lines: list[str] = []
    in_schema = False
    start = comments[0][0] if comments else 0
    for _, text in comments:
        if text.strip() == SCHEMA_MARK:
            in_schema = not in_schema
            continue
        if in_schema:
            schema_lines.append(text[1:] if text.startswith(" ") else text)
        elif text.startswith(" -- "):
            prose = [text[4:].strip()]  # helm-docs: the description starts here
        elif text.strip():
            prose.append(text.strip())
    if in_schema:
        raise ValuesError(f"values.yaml:{start}: a '# @schema' block is not closed")
    try:
        schema = yaml.safe_load("\n".join(schema_lines)) if schema_lines else {}
    except yaml.YAMLError as err:
        raise ValuesError(f"values.yaml:{start}: the '# @schema' block is not YAML: {err}") from err
    if not isinstance(schema, dict):
        raise ValuesError(f"values.yaml:{start}: a '# @schema' block must be a mapping")
    return " ".join(prose), schema


def read_settings(text: str) -> list[Setting]:
    """Every key of ``text`` (values.yaml) as a tree of settings, in file order."""
    top: list[Setting] = []
    stack: list[tuple[int, Setting]] = []
    comments: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append((number, stripped[1:]))
            continue
        if not stripped:
            comments = []  # a blank line ends a comment block: it was a file or group heading
            continue
        match = KEY_LINE.match(line)
        if match is None:
            comments = []  # a list item or a continued value
            continue
        indent = len(match["indent"])
        stack = [(n, s) for n, s in stack if n < indent]
        if stack and stack[-1][1].whole:
            comments = []
            continue
        description, schema = _read_block(comments)
        comments = []
        setting = Setting(key=match["key"], line=number, description=description, schema=schema)
        (stack[-1][1].children if stack else top).append(setting)
        stack.append((indent, setting))
    return top


def _type_of(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _node(setting: Setting, default: Any) -> dict[str, Any]:
    kind = setting.schema.get("type", _type_of(default))
    node: dict[str, Any] = {} if kind is None or "anyOf" in setting.schema else {"type": kind}
    if not setting.description:
        raise ValuesError(f"values.yaml:{setting.line}: `{setting.key}` has no description")
    node["description"] = setting.description
    extra = {k: v for k, v in setting.schema.items() if k != "type"}
    if setting.children and not setting.whole:
        values = default if isinstance(default, dict) else {}
        node["additionalProperties"] = False
        node["properties"] = {c.key: _node(c, values.get(c.key)) for c in setting.children}
    node.update(extra)
    return node


def build_schema(text: str) -> dict[str, Any]:
    """The JSON schema of values.yaml ``text``, from its defaults and comment blocks."""
    defaults = yaml.safe_load(text) or {}
    properties = {s.key: _node(s, defaults.get(s.key)) for s in read_settings(text)}
    properties.setdefault("global", GLOBAL)
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": TITLE,
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
