"""values.yaml, values.schema.json and the chart README's values reference agree.

Covers: a typo'd key, a wrong type and a value outside an enum are each rejected by
`helm template` with a message naming the key; every object in the schema forbids unknown keys
and every property has a description; values.yaml has a schema hint on line 1 and a comment
over every key; every key of values.yaml is in the schema and the other way round; the chart
README's values table and values.schema.json are what hack/gen_chart_docs.py generates from
values.yaml's comments, and the generator names the line of a comment it can't read.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from charttools import CHART, ROOT, run_helm, template_args

sys.path.insert(0, str(ROOT / "hack"))

import gen_chart_docs
from chart_values import ValuesError, build_schema

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            "operator:\n  watchNamespace: [team-a]\n",
            "at '/operator': additional properties 'watchNamespace' not allowed",
        ),
        (
            "operator:\n  metricsPort: '8080'\n",
            "at '/operator/metricsPort': got string, want integer",
        ),
        ("service:\n  type: ExternalName\n", "at '/service/type': value must be one of"),
        (
            "monitoring:\n  podMonitor:\n    interval: 15\n",
            "at '/monitoring/podMonitor/interval': got number, want string",
        ),
        ("crds: {install: 'yes'}\n", "at '/crds/install': got string, want boolean"),
    ],
    ids=["typo-key", "string-port", "bad-enum", "number-duration", "string-bool"],
)
def test_schema_rejects_bad_values(helm: Path, tmp_path: Path, values: str, expected: str) -> None:
    path = tmp_path / "bad-values.yaml"
    path.write_text(values)
    done = run_helm(helm, template_args(values=[path]))
    assert done.returncode != 0, f"helm accepted {values!r}"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert expected in done.stderr, done.stderr


def _objects(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _objects(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"], f"{path}[]")


def test_schema_is_closed_and_described() -> None:
    for path, node in _objects(SCHEMA):
        if path:
            assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def _keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict) and value and not path.endswith(("labels", "resources")):
            yield from _keys(value, path)


def test_values_and_schema_have_the_same_keys() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    in_values = set(_keys(values))
    in_schema = {path for path, _ in _objects(SCHEMA) if path and "[]" not in path}
    free_form = {"global"}  # helm's key for parent charts; not set by this chart
    # Keys below free-form maps (labels, resources, affinity) are data, not chart settings.
    in_schema = {
        p for p in in_schema if not p.startswith(("resources.", "affinity.", "operator.extraEnv."))
    }
    assert in_values == in_schema - free_form


def _settings() -> set[str]:
    return {path for path, _ in _objects(SCHEMA) if path and "[]" not in path}


def test_values_file_has_schema_hint_and_a_comment_over_every_key() -> None:
    lines = VALUES_TEXT.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    settings = {p for p in _settings() if not p.startswith(("resources.", "affinity."))}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    seen = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        stack = [(n, k) for n, k in stack if n < indent]
        path = ".".join([k for _, k in stack] + [stripped.split(":", 1)[0]])
        stack.append((indent, stripped.split(":", 1)[0]))
        if path in settings:
            seen.add(path)
            assert lines[i - 1].strip().startswith("#"), (
                f"values.yaml:{i + 1} `{path}` has no comment"
            )
    assert seen == settings - {"global"}


def test_chart_readme_values_table_is_generated() -> None:
    readme = (CHART / "README.md").read_text()
    assert gen_chart_docs.values_table() in readme, (
        "charts/qwenft-operator/README.md is stale; run: python hack/gen_chart_docs.py"
    )


def test_schema_is_generated_from_values_comments() -> None:
    assert (CHART / "values.schema.json").read_text() == gen_chart_docs.schema_text(), (
        "charts/qwenft-operator/values.schema.json is stale; run: python hack/gen_chart_docs.py"
    )


def test_generator_reads_description_type_and_schema_block() -> None:
    text = (
        "# A section heading.\n"
        "server:\n"
        "  # -- Port the server listens on,\n"
        "  # continued on a second line.\n"
        "  # @schema\n"
        "  # minimum: 1\n"
        "  # @schema\n"
        "  port: 8080\n"
    )
    server = build_schema(text)["properties"]["server"]
    assert server["description"] == "A section heading."
    assert server["additionalProperties"] is False
    assert server["properties"]["port"] == {
        "type": "integer",
        "description": "Port the server listens on, continued on a second line.",
        "minimum": 1,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# -- A port.\n# @schema\n# minimum: 1\nport: 1\n", "values.yaml:1: a '# @schema'"),
        ("# -- A port.\n# @schema\n# [1, 2\n# @schema\nport: 1\n", "values.yaml:1: the '# @sch"),
        ("name: x\n", "values.yaml:1: `name` has no description"),
    ],
    ids=["unclosed-block", "not-yaml", "undocumented-key"],
)
def test_generator_names_the_line_it_cannot_read(text: str, expected: str) -> None:
    with pytest.raises(ValuesError, match=re.escape(expected)):
        build_schema(text)
