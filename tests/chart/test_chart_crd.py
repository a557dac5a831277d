"""The chart installs the one QwenFineTune CRD of crds/, never a drifting copy.

Covers: files/crd.yaml is a symlink to crds/finetune.qwenft.io_qwenfinetunes.yaml; the rendered
CRD equals that file apart from the chart's labels and the keep annotation; `helm package`
follows the link, so the packaged chart carries the same bytes; crds.install=false and
crds.keep=false do what they say.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import yaml
from charttools import CHART, CRD_FILE, Render, by_kind, run_helm


def test_chart_crd_is_a_link_to_the_generated_file() -> None:
    link = CHART / "files" / "crd.yaml"
    assert link.is_symlink()
    assert link.resolve() == CRD_FILE.resolve()
    assert CRD_FILE.is_file(), f"{CRD_FILE} is missing; it is generated from the operator's spec"


def test_rendered_crd_equals_the_file(render: Render) -> None:
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    source = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"] == source["spec"]
    assert (
        crd["metadata"]["name"]
        == source["metadata"]["name"]
        == ("qwenfinetunes.finetune.qwenft.io")
    )
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_toggles(render: Render) -> None:
    assert by_kind(render(sets=["crds.install=false"]), "CustomResourceDefinition") == []
    (crd,) = by_kind(render(sets=["crds.keep=false"]), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_packaged_chart_carries_the_crd_bytes(helm: Path, tmp_path: Path) -> None:
    done = run_helm(helm, ["package", str(CHART), "--destination", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("qwenft-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        member = tar.extractfile("qwenft-operator/files/crd.yaml")
        assert member is not None
        packaged = io.TextIOWrapper(member).read()
    assert packaged == CRD_FILE.read_text()
    assert "qwenft-operator/files/alerts_test.yaml" not in names
    assert not any("/ci/" in name for name in names)
