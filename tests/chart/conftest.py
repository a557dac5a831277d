"""Fixtures for the Helm chart tests: the real `helm` and `promtool`, and chart rendering.

`helm` comes from the control-plane cache that hack/build-cluster.sh fills
(~/.cache/qwenft/k8s/$K8S_VERSION/bin, or $QWENFT_K8S_BIN); `promtool` from the Debian
`prometheus` package (also installed by that script). A missing tool fails the test with the
command that installs it: these tests never skip.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from charttools import ROOT, Render, run_helm, template_args

sys.path.insert(0, str(ROOT / "hack"))

from devcluster.binaries import bin_dir


def _tool(path: Path | None, name: str, install: str) -> Path:
    if path is not None and path.is_file():
        return path
    pytest.fail(f"`{name}` not found; install it with: {install}", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary built by hack/build-cluster.sh."""
    return _tool(bin_dir() / "helm", "helm", "bash hack/build-cluster.sh")


@pytest.fixture(scope="session")
def promtool() -> Path:
    """promtool from the Debian prometheus package."""
    found = shutil.which("promtool")
    return _tool(Path(found) if found else None, "promtool", "apt-get install -y prometheus")


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """render(values=[...], sets=[...], api_versions=[...]) -> the rendered objects."""

    def _render(
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        namespace: str = "qwenft-system",
    ) -> list[dict[str, Any]]:
        done = run_helm(helm, template_args(values, sets, api_versions, namespace))
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return _render
