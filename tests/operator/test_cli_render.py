"""``qwenft render``: the objects the operator creates for a manifest, printed without a cluster.

Covers: every shipped QwenFineTune example renders (the local-only quickstart is refused
with the operator's own reason, naming spec.output.pvc); the rendered objects of each golden
example equal its golden builder files, in the operator's creation order with the phase
that creates each; the headless Service only for a multi-node run; the YAML stream parses
as Kubernetes objects (apiVersion, kind, metadata.name, namespace) and passes the 1.37
OpenAPI schema; --output json is a v1 List of the same objects; --phase filters;
--namespace overrides the manifest's; QWENFT_* settings reach the builders; invalid
manifests exit 2 naming the field; --help shows an example.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from invalid_manifests import CASES, InvalidCase, build
from qwenft_operator import cli, cli_render
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.render import RenderError, render_children
from qwenft_operator.settings import OperatorConfig

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[1] / "examples"
GOLDEN = HERE / "golden"
RUN_EXAMPLES = sorted(
    p.stem
    for p in EXAMPLES.glob("*.yaml")
    if yaml.safe_load(p.read_text(encoding="utf-8")).get("kind") == "QwenFineTune"
)
LOCAL_ONLY = {"quickstart-local"}
# File name of each kind's golden file, by (kind, child-name suffix).
GOLDEN_FILE = {
    ("Job", "validate"): "validate-job",
    ("ConfigMap", "config"): "configmap",
    ("Service", "train"): "train-service",
    ("Job", "train"): "train-job",
    ("Job", "merge"): "merge-job",
    ("Service", "serve"): "serve-service",
    ("Deployment", "serve"): "serve-deployment",
}


def render_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["render", *args])
    out, err = capsys.readouterr()
    return code, out, err


def golden_run(example: str) -> Run:
    """The run the golden files were built from (namespace ml, a fixed uid)."""
    manifest = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text(encoding="utf-8"))
    manifest["metadata"].update(namespace="ml", uid="0c2f4a1e-run-uid", generation=1)
    return Run.from_body(manifest)


# Golden runs are named after their example; golden/model-servers holds QwenModelServer files.
GOLDEN_RUNS = sorted(p.name for p in GOLDEN.iterdir() if (EXAMPLES / f"{p.name}.yaml").exists())


def test_every_example_golden_directory_is_compared() -> None:
    assert set(GOLDEN_RUNS) >= {"lora-single-gpu", "qlora-multinode-zero2", "full-finetune"}


@pytest.mark.parametrize("example", GOLDEN_RUNS)
def test_rendered_objects_equal_the_golden_builder_files(example: str) -> None:
    run = golden_run(example)
    rendered = render_children(run)
    files = {}
    for child in rendered:
        suffix = child.name.removeprefix(run.name + "-")
        files[GOLDEN_FILE[(child.kind, suffix)]] = child.body
    golden = {
        p.stem: yaml.safe_load(p.read_text(encoding="utf-8"))
        for p in (GOLDEN / example).glob("*.yaml")
    }
    assert files.keys() == golden.keys()
    for name, body in files.items():
        assert body == golden[name], f"{example}/{name} differs from its golden file"


def test_creation_order_and_phases_of_a_multinode_merged_run() -> None:
    rendered = render_children(golden_run("qlora-multinode-zero2"))
    assert [(c.phase, c.kind, c.name) for c in rendered] == [
        (Phase.VALIDATING, "Job", "qlora-72b-validate"),
        (Phase.TRAINING, "ConfigMap", "qlora-72b-config"),
        (Phase.TRAINING, "Service", "qlora-72b-train"),
        (Phase.TRAINING, "Job", "qlora-72b-train"),
        (Phase.MERGING, "Job", "qlora-72b-merge"),
        (Phase.DEPLOYING, "Service", "qlora-72b-serve"),
        (Phase.DEPLOYING, "Deployment", "qlora-72b-serve"),
    ]
    train_job = rendered[3].body
    assert train_job["spec"]["completions"] == train_job["spec"]["parallelism"] == 2


def test_single_node_unmerged_run_without_inference_has_no_service_merge_or_server() -> None:
    manifest = yaml.safe_load((EXAMPLES / "lora-single-gpu.yaml").read_text(encoding="utf-8"))
    manifest["spec"]["merge"] = {"enabled": False}
    manifest["spec"]["inference"] = {"enabled": False}
    manifest["spec"].pop("evaluationPrompts", None)
    rendered = render_children(Run.from_body(manifest))
    assert [(c.phase, c.kind) for c in rendered] == [
        (Phase.VALIDATING, "Job"),
        (Phase.TRAINING, "ConfigMap"),
        (Phase.TRAINING, "Job"),
    ]


@pytest.mark.parametrize("example", RUN_EXAMPLES)
def test_every_example_renders_as_kubernetes_objects(
    example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = render_cli(capsys, str(EXAMPLES / f"{example}.yaml"), "-n", "ml")
    if example in LOCAL_ONLY:
        assert code == 2
        assert "spec.output.pvc" in err and out == ""
        return
    assert code == 0, err
    assert out.startswith("---\n# created when the run enters Validating\n")
    documents = list(yaml.safe_load_all(out))
    assert len(documents) == out.count("\n---\n") + 1 >= 5
    for doc in documents:
        assert isinstance(doc, dict)
        assert doc["apiVersion"] in {"v1", "batch/v1", "apps/v1"}
        assert doc["kind"] in {"Job", "ConfigMap", "Service", "Deployment"}
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "ml"
        try:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{example} {doc['kind']}: {str(e).splitlines()[0]}")


def test_yaml_stream_round_trips_to_the_decision_bodies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = EXAMPLES / "qlora-multinode-zero2.yaml"
    code, out, _ = render_cli(capsys, str(example), "--namespace", "ml")
    assert code == 0
    expected = render_children(
        cli_render.load_run(example, namespace="ml", settings=OperatorConfig())
    )
    assert list(yaml.safe_load_all(out)) == [c.body for c in expected]
    comments = [line for line in out.splitlines() if line.startswith("# created")]
    assert comments == [f"# created when the run enters {c.phase.value}" for c in expected]


def test_json_output_is_a_list_of_the_same_objects(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLES / "lora-single-gpu.yaml")
    _, as_yaml, _ = render_cli(capsys, example)
    code, as_json, _ = render_cli(capsys, example, "-o", "json")
    assert code == 0
    listed = json.loads(as_json)
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert listed["items"] == list(yaml.safe_load_all(as_yaml))


def test_phase_filter_and_namespace_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = render_cli(
        capsys, str(EXAMPLES / "qlora-multinode-zero2.yaml"), "--phase", "Training"
    )
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "qlora-72b-config"),
        ("Service", "qlora-72b-train"),
        ("Job", "qlora-72b-train"),
    ]
    manifest = yaml.safe_load((EXAMPLES / "qlora-multinode-zero2.yaml").read_text("utf-8"))
    assert {d["metadata"]["namespace"] for d in docs} == {
        manifest["metadata"].get("namespace", "default")
    }


def test_operator_settings_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWENFT_TRAINER_IMAGE", "registry.local/trainer:dev")
    code, out, _ = render_cli(capsys, str(EXAMPLES / "lora-single-gpu.yaml"), "--phase", "Merging")
    assert code == 0
    (merge_job,) = yaml.safe_load_all(out)
    images = {c["image"] for c in merge_job["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.local/trainer:dev"}


@pytest.mark.parametrize("case", CASES[:12], ids=[c.id for c in CASES[:12]])
def test_invalid_manifest_exits_2_naming_the_field(
    case: InvalidCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(build(case)), encoding="utf-8")
    code, out, err = render_cli(capsys, str(manifest))
    assert code == 2 and out == ""
    assert case.field in err


def test_not_a_run_and_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = render_cli(capsys, str(EXAMPLES / "train-lora.yaml"))
    assert code == 2 and "kind" in err
    code, _, err = render_cli(capsys, str(tmp_path / "absent.yaml"))
    assert code == 2 and "can't read" in err


def test_local_only_spec_is_refused_with_the_operator_reason() -> None:
    manifest = yaml.safe_load((EXAMPLES / "quickstart-local.yaml").read_text("utf-8"))
    with pytest.raises(RenderError, match=r"InvalidSpec: spec\.output\.pvc"):
        render_children(Run.from_body(manifest))


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["render", "--help"])
    assert exit_.value.code == 0
    assert "qwenft render examples/lora-single-gpu.yaml" in capsys.readouterr().out
