"""The chart installs the CRDs of crds/ (QwenFineTune, QwenModelServer), never drifting copies.

Covers: files/crd.yaml and files/crd-modelserver.yaml are symlinks to the generated files in
crds/; each rendered CRD equals its file apart from the chart's labels and the keep annotation;
`helm package` follows the links, so the packaged chart carries the same bytes;
crds.install=false and crds.keep=false do what they say.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import yaml
from charttools import CHART, CRD_FILE, MODEL_SERVER_CRD_FILE, Render, by_kind, run_helm

# chart file -> (generated file, CRD name)
CRDS = {
    "crd.yaml": (CRD_FILE, "qwenfinetunes.finetune.qwenft.io"),
    "crd-modelserver.yaml": (MODEL_SERVER_CRD_FILE, "qwenmodelservers.finetune.qwenft.io"),
}


@pytest.mark.parametrize("link_name", sorted(CRDS))
def test_chart_crd_is_a_link_to_the_generated_file(link_name: str) -> None:
    link = CHART / "files" / link_name
    source, _ = CRDS[link_name]
    assert link.is_symlink()
    assert link.resolve() == source.resolve()
    assert source.is_file(), f"{source} is missing; it is generated from the operator's spec"


def test_rendered_crds_equal_the_files(render: Render) -> None:
    rendered = {
        crd["metadata"]["name"]: crd for crd in by_kind(render(), "CustomResourceDefinition")
    }
    assert sorted(rendered) == sorted(name for _, name in CRDS.values())
    for source_file, name in CRDS.values():
        crd = rendered[name]
        source = yaml.safe_load(source_file.read_text())
        assert crd["spec"] == source["spec"]
        assert source["metadata"]["name"] == name
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_toggles(render: Render) -> None:
    assert by_kind(render(sets=["crds.install=false"]), "CustomResourceDefinition") == []
    crds = by_kind(render(sets=["crds.keep=false"]), "CustomResourceDefinition")
    assert len(crds) == len(CRDS)
    for crd in crds:
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_packaged_chart_carries_the_crd_bytes(helm: Path, tmp_path: Path) -> None:
    done = run_helm(helm, ["package", str(CHART), "--destination", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("qwenft-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        for link_name, (source, _) in CRDS.items():
            member = tar.extractfile(f"qwenft-operator/files/{link_name}")
            assert member is not None
            assert io.TextIOWrapper(member).read() == source.read_text()
    assert "qwenft-operator/files/alerts_test.yaml" not in names
    assert not any("/ci/" in name for name in names)
