"""Pure builders: every child object of the shipped examples, compared whole.

Covers: each builder's output for each cluster example equals its golden YAML under
tests/operator/golden/ (regenerate with QWENFT_UPDATE_GOLDEN=1 and review the diff);
every object passes the Kubernetes 1.37 OpenAPI schema (kubernetes-validate, strict);
owner references and labels on every child and pod template; the restricted security
context; the validation pod placed by spec.validation, not by the GPU scheduling, and told
an explicit training.attention; the
rendered trainer config (valid TrainConfig, paths as the pods see them, no
token anywhere); torchrun arguments; GPUs only where they belong; Kueue; the pod failure
policy (stopped trainers not counted); the training pods' grace period (spec or method
default); URL datasets; the vLLM decision for unmerged adapters; a pinned hub revision in the
merge Job and the servers that read the hub base. (That no operator module imports torch
is tests/test_import_contract.py's.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from qwenft_operator import labels
from qwenft_operator.builders import config, merge, paths, serving, training, validation
from qwenft_operator.parsed_run import Run
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.workloads import ValidationSpec
from qwenft_trainer import exit_codes
from qwenft_trainer.config import TrainConfig, dump_config

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[1] / "examples"
GOLDEN = HERE / "golden"
CLUSTER_EXAMPLES = [
    "lora-single-gpu",
    "qlora-multinode-zero2",
    "full-finetune",
    "kueue-queued",
    "qwen3-8b-thinking",
    "qwen3-30b-a3b-moe",
]
UPDATE = os.environ.get("QWENFT_UPDATE_GOLDEN") == "1"


def load_run(example: str, **settings: Any) -> Run:
    manifest = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text(encoding="utf-8"))
    manifest["metadata"].update(namespace="ml", uid="0c2f4a1e-run-uid", generation=1)
    return Run.from_body(manifest, OperatorConfig(**settings))


class GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config, the launcher script) as readable blocks."""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


GoldenDumper.add_representer(str, _block_strings)


def build_all(run: Run) -> dict[str, dict[str, Any]]:
    objects = {
        "configmap": config.build_config_map(run),
        "train-job": training.build_train_job(run),
        "validate-job": validation.build_validation_job(run),
    }
    if training.needs_rendezvous_service(run):
        objects["train-service"] = training.build_headless_service(run)
    if serving.needs_merge(run):
        objects["merge-job"] = merge.build_merge_job(run)
    if run.spec.inference.enabled:
        target = serving.build_serve_target(run)
        objects["serve-deployment"] = serving.build_serve_deployment(run, target)
        objects["serve-service"] = serving.build_serve_service(run)
    return objects


CASES = [(example, kind) for example in CLUSTER_EXAMPLES for kind in build_all(load_run(example))]


@pytest.mark.parametrize(("example", "kind"), CASES, ids=[f"{e}/{k}" for e, k in CASES])
def test_matches_golden(example: str, kind: str) -> None:
    built = build_all(load_run(example))[kind]
    golden = GOLDEN / example / f"{kind}.yaml"
    text = yaml.dump(built, Dumper=GoldenDumper, sort_keys=False, width=100)
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}: run with QWENFT_UPDATE_GOLDEN=1"
    assert built == yaml.safe_load(golden.read_text(encoding="utf-8")), (
        f"{example}/{kind} changed; if intended, regenerate with QWENFT_UPDATE_GOLDEN=1"
    )


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / e / f"{k}.yaml" for e, k in CASES}
    assert set(GOLDEN.glob("*/*.yaml")) == expected


@pytest.mark.parametrize(("example", "kind"), CASES, ids=[f"{e}/{k}" for e, k in CASES])
def test_valid_kubernetes_object(example: str, kind: str) -> None:
    built = build_all(load_run(example))[kind]
    try:
        kubernetes_validate.validate(built, "1.37.0", strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{example}/{kind}: {str(err).splitlines()[0]}")


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    template = obj.get("spec", {}).get("template")
    return [template["spec"]] if template else []


@pytest.mark.parametrize("example", CLUSTER_EXAMPLES)
def test_every_child_is_owned_labelled_and_restricted(example: str) -> None:
    run = load_run(example)
    for kind, obj in build_all(run).items():
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "finetune.qwenft.io/v1alpha1",
                "kind": "QwenFineTune",
                "name": run.name,
                "uid": "0c2f4a1e-run-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][labels.MANAGED_BY_KEY] == "qwenft-operator"
        assert meta["labels"][labels.NAME_KEY] == run.name
        assert meta["labels"][labels.COMPONENT_KEY] in labels.COMPONENTS
        for pod in pod_specs(obj):
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert template_labels[labels.NAME_KEY] == run.name, kind
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["securityContext"] == {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                }, f"{kind}/{container['name']}"
                assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def all_text(run: Run) -> str:
    return json.dumps(build_all(run)) + config.build_config_map(run)["data"]["train.yaml"]


def test_hub_token_is_only_a_secret_key_ref() -> None:
    run = load_run("lora-single-gpu")
    text = all_text(run)
    assert "hf-token" in text  # the Secret's name, in secretKeyRef only
    job = training.build_train_job(run)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    token = [e for e in env if e["name"] == "HF_TOKEN"]
    assert token == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    ]
    rendered = config.build_config_map(run)["data"]["train.yaml"]
    assert "hf-token" not in rendered
    assert "secret" not in rendered.lower()


@pytest.mark.parametrize("example", [*CLUSTER_EXAMPLES, "quickstart-local"])
def test_train_config_is_a_valid_trainer_config(example: str) -> None:
    run = load_run(example)
    text = config.build_config_map(run)["data"][paths.CONFIG_KEY]
    loaded = TrainConfig.model_validate(yaml.safe_load(text))
    assert loaded == config.build_train_config(run)
    assert loaded.run_name == run.name
    assert loaded.metrics_port == config.TRAINER_METRICS_PORT
    assert loaded.lora == run.spec.lora
    assert loaded.training == run.spec.training
    assert loaded.method == run.spec.method


def test_train_config_paths_are_where_the_pods_see_them() -> None:
    qlora = config.build_train_config(load_run("qlora-multinode-zero2"))
    assert qlora.model.name_or_path == "Qwen/Qwen2.5-72B-Instruct"
    assert qlora.model.cache_dir == "/cache/huggingface"
    assert qlora.data.path == "/data/chats/train.jsonl"
    assert qlora.data.format == "messages"
    assert qlora.output_dir == "/output/qlora-72b"
    assert qlora.quantization is not None and qlora.quantization.quant_type == "nf4"
    full = config.build_train_config(load_run("full-finetune"))
    assert full.model.name_or_path == "/models/Qwen2.5-1.5B-Instruct"
    assert full.data.path == "/data/train.jsonl"
    assert full.output_dir == "/output/full-1p5b"
    local = config.build_train_config(load_run("quickstart-local"))
    assert local.model.name_or_path == ".qwenft/tiny-qwen"
    assert local.output_dir == ".qwenft/runs/quickstart"


def test_torchrun_arguments_per_node() -> None:
    run = load_run("qlora-multinode-zero2")
    job = training.build_train_job(run)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "qlora-72b-train"
    assert pod["restartPolicy"] == "Never"
    trainer = pod["containers"][0]
    assert trainer["command"] == training.LAUNCHER_COMMAND
    assert trainer["args"] == [
        "--nnodes", "2", "--nproc-per-node", "8", "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--master-addr", "qlora-72b-train-0.qlora-72b-train.ml.svc", "--master-port", "29500",
        "-m", "qwenft_trainer.train", "--config", "/etc/qwenft/train.yaml",
    ]  # fmt: skip
    index_env = trainer["env"][0]
    assert index_env["name"] == "JOB_COMPLETION_INDEX"
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    service = training.build_headless_service(run)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        labels.NAME_KEY: "qlora-72b",
        labels.COMPONENT_KEY: "train",
    }


def gpu_requests(obj: dict[str, Any], resource: str = "nvidia.com/gpu") -> list[Any]:
    found = []
    for pod in pod_specs(obj):
        for container in pod["containers"] + pod.get("initContainers", []):
            res = container.get("resources", {})
            found.append(
                (res.get("requests", {}).get(resource), res.get("limits", {}).get(resource))
            )
    return found


def test_gpus_only_for_training_and_serving() -> None:
    run = load_run("qlora-multinode-zero2")
    assert gpu_requests(training.build_train_job(run)) == [(8, 8)]
    assert gpu_requests(validation.build_validation_job(run)) == [(None, None)]
    assert gpu_requests(merge.build_merge_job(run)) == [(None, None)]
    target = serving.build_serve_target(run)
    assert gpu_requests(serving.build_serve_deployment(run, target)) == [(4, 4)]


def test_gpu_resource_name_from_settings_and_spec() -> None:
    run = load_run("lora-single-gpu", gpu_resource="amd.com/gpu")
    assert gpu_requests(training.build_train_job(run), "amd.com/gpu") == [(1, 1)]
    spec = run.spec.model_copy(
        update={"resources": run.spec.resources.model_copy(update={"gpu_resource_name": "x.io/g"})}
    )
    custom = Run(name=run.name, namespace="ml", uid="u", spec=spec, settings=run.settings)
    assert gpu_requests(training.build_train_job(custom), "x.io/g") == [(1, 1)]


def test_shared_memory_and_scheduling_pass_through() -> None:
    pod = training.build_train_job(load_run("qlora-multinode-zero2"))["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm == {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "training"


def test_kueue_queue_suspends_and_labels_the_job() -> None:
    job = training.build_train_job(load_run("kueue-queued"))
    assert job["metadata"]["labels"][labels.KUEUE_QUEUE_KEY] == "team-a"
    assert job["spec"]["suspend"] is True
    plain = training.build_train_job(load_run("lora-single-gpu"))
    assert labels.KUEUE_QUEUE_KEY not in plain["metadata"]["labels"]
    assert plain["spec"]["suspend"] is False


def test_pod_failure_policy_and_run_policy() -> None:
    spec = training.build_train_job(load_run("lora-single-gpu"))["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        # a trainer stopped with a checkpoint (a deleted pod has no DisruptionTarget)
        {
            "action": "Ignore",
            "onExitCodes": {
                "containerName": "trainer",
                "operator": "In",
                "values": [training.STOPPED_EXIT_CODE],
            },
        },
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "trainer",
                "operator": "In",
                "values": [training.INVALID_INPUT_EXIT_CODE],
            },
        },
    ]
    assert training.STOPPED_EXIT_CODE == exit_codes.STOPPED
    ttl = training.build_train_job(load_run("qlora-multinode-zero2"))["spec"]
    assert ttl["ttlSecondsAfterFinished"] == 86400 and "activeDeadlineSeconds" not in ttl


@pytest.mark.parametrize(
    ("example", "policy", "seconds"),
    [
        ("lora-single-gpu", {}, training.ADAPTER_GRACE_SECONDS),
        ("qlora-multinode-zero2", {}, training.ADAPTER_GRACE_SECONDS),
        ("full-finetune", {}, training.FULL_GRACE_SECONDS),
        ("full-finetune", {"terminationGracePeriodSeconds": 90}, 90),
        ("lora-single-gpu", {"terminationGracePeriodSeconds": 0}, 0),
    ],
)
def test_training_pods_get_the_grace_period_of_the_spec_or_their_method(
    example: str, policy: dict[str, int], seconds: int
) -> None:
    body = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    body["spec"].setdefault("runPolicy", {}).update(policy)
    pod = training.build_train_job(Run.from_body(body))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == seconds


def test_validation_job_runs_the_validator() -> None:
    run = load_run("lora-single-gpu")
    pod = validation.build_validation_job(run)["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == [
        "qwenft", "data", "validate", "/data/train.jsonl",
        "--model", "Qwen/Qwen2.5-7B-Instruct", "--max-seq-length", "2048",
        "--format", "auto", "--thinking", "empty-in-prompt", "--json", "--revision", "main",
        "--method", "lora", "--merge-into", "Qwen/Qwen2.5-7B-Instruct",
        "--token-cache-from-env", "QWENFT_TRAIN_CONFIG",
    ]  # fmt: skip
    # the output volume holds the token cache it writes for training
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "data", "output"}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env[validation.TRAIN_CONFIG_ENV] == dump_config(config.build_train_config(run))
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert not mounts["output"].get("readOnly", False)


def test_the_validator_is_told_an_explicit_attention_kernel() -> None:
    assert "--attention" not in validation.build_validation_args(load_run("lora-single-gpu"))
    body = yaml.safe_load((EXAMPLES / "lora-single-gpu.yaml").read_text())
    body["spec"]["training"]["attention"] = "flash_attention_2"
    args = validation.build_validation_args(Run.from_body(body))
    assert args[args.index("--attention") + 1] == "flash_attention_2"


def gptq_run(*, lora: dict[str, Any] | None = None, **merge_spec: Any) -> Run:
    """The Q-LoRA example on Qwen's GPTQ-Int4 release of its base."""
    path = EXAMPLES / "qlora-multinode-zero2.yaml"
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    manifest["metadata"].update(namespace="ml", uid="0c2f4a1e-run-uid", generation=1)
    manifest["spec"]["model"]["hub"]["id"] = "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4"
    manifest["spec"].setdefault("merge", {}).update(merge_spec)
    manifest["spec"].setdefault("lora", {}).update(lora or {})
    return Run.from_body(manifest, OperatorConfig())


def test_validator_checks_the_merge_target_only_when_the_run_merges() -> None:
    """A GPTQ base merges into spec.merge.base; the validator refuses a quantized target."""

    def args(run: Run) -> list[str]:
        return validation.build_validation_args(run)[:-2]  # without --token-cache-from-env

    assert args(gptq_run())[-4:] == [
        "--method", "qlora", "--merge-into", "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4",
    ]  # fmt: skip
    into_bf16 = gptq_run(base="Qwen/Qwen2.5-72B-Instruct")
    assert args(into_bf16)[-2:] == ["--merge-into", "Qwen/Qwen2.5-72B-Instruct"]
    pod = merge.build_merge_job(into_bf16)["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][2:4] == ["--base", "Qwen/Qwen2.5-72B-Instruct"]
    # Serving the adapter unmerged (no expert tensors, so vLLM can load it as a LoRA):
    # nothing is merged, so no merge target is checked.
    unmerged = gptq_run(enabled=False, lora={"targetParameters": []})
    assert not serving.needs_merge(unmerged)
    assert args(unmerged)[-2:] == ["--method", "qlora"]
    assert "--merge-into" not in args(load_run("full-finetune"))


def test_validation_pod_is_placed_by_spec_validation_not_the_gpu_scheduling() -> None:
    run = load_run("qlora-multinode-zero2")
    job = validation.build_validation_job(run)
    pod = job["spec"]["template"]["spec"]
    assert run.spec.scheduling.node_selector and run.spec.scheduling.tolerations
    assert not {"nodeSelector", "tolerations", "affinity"} & set(pod)
    assert pod["priorityClassName"] == "training"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    own = {
        "nodeSelector": {"node-role.example.com/cpu": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch"}],
        "activeDeadlineSeconds": 7200,
    }
    spec = run.spec.model_copy(update={"validation": ValidationSpec.model_validate(own)})
    placed = dataclasses.replace(run, spec=spec)
    job = validation.build_validation_job(placed)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == own["nodeSelector"]
    assert pod["tolerations"] == own["tolerations"]
    assert "affinity" not in pod and job["spec"]["activeDeadlineSeconds"] == 7200
    train = training.build_train_job(placed)["spec"]["template"]["spec"]
    assert train["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_url_dataset_is_fetched_by_an_init_container() -> None:
    pod = training.build_train_job(load_run("kueue-queued"))["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["image"] == OperatorConfig().awscli_image
    assert fetch["command"] == [
        "aws", "s3", "cp", "--only-show-errors",
        "--endpoint-url", "https://minio.storage.svc:9000",
        "s3://team-a-data/chats/train.jsonl", "/data/train.jsonl",
    ]  # fmt: skip
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    http = training.build_train_job(load_run("full-finetune"))["spec"]["template"]["spec"]
    curl = http["initContainers"][0]
    assert curl["command"][0] == "curl"
    assert curl["command"][-2:] == [
        "/data/train.jsonl",
        "https://datasets.example.com/chats/train.jsonl",
    ]
    assert next(v for v in http["volumes"] if v["name"] == "data") == {
        "name": "data",
        "emptyDir": {},
    }


def test_merge_job_command() -> None:
    command = merge.build_merge_job(load_run("qlora-multinode-zero2"))["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert command == [
        "qwenft", "merge", "--base", "Qwen/Qwen2.5-72B-Instruct",
        "--adapter", "/output/qlora-72b", "--output", "/output/qlora-72b/merged",
        "--dtype", "bf16", "--method", "qlora", "--overwrite",
    ]  # fmt: skip


def pinned(run: Run, revision: str) -> Run:
    """``run`` with its hub model pinned to ``revision``."""
    hub = run.spec.model.hub
    assert hub is not None
    model = run.spec.model.model_copy(update={"hub": hub.model_copy(update={"revision": revision})})
    return Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"model": model})
    )


def test_merge_job_reads_the_base_at_the_pinned_revision() -> None:
    run = pinned(load_run("qlora-multinode-zero2"), "5d0f2e8a")
    command = merge.build_merge_job(run)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--revision", "5d0f2e8a"]
    assert "--revision" not in merge.build_merge_args(load_run("qlora-multinode-zero2"))


def test_vllm_over_a_hub_base_reads_model_and_tokenizer_at_the_pinned_revision() -> None:
    run = pinned(load_run("kueue-queued"), "5d0f2e8a")
    assert serve_command(run)[3:9] == [
        "--model", "Qwen/Qwen2.5-7B-Instruct",
        "--revision", "5d0f2e8a", "--tokenizer-revision", "5d0f2e8a",
    ]  # fmt: skip
    assert "--revision" not in serve_command(load_run("kueue-queued"))  # not pinned
    # A merged model is a directory of the run's own: no hub revision applies to it.
    merged = pinned(load_run("qlora-multinode-zero2"), "5d0f2e8a")
    assert serving.build_serve_target(merged).revision is None
    assert "--revision" not in serve_command(merged)


def serve_command(run: Run) -> list[str]:
    deployment = serving.build_serve_deployment(run, serving.build_serve_target(run))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return list(container["command"])


def test_serving_targets_and_commands() -> None:
    merged = load_run("lora-single-gpu")
    assert serve_command(merged) == [
        "qwenft", "serve", "--model", "/output/support-lora/merged",
        "--served-model-name", "support-assistant", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    full = load_run("full-finetune")
    assert not serving.needs_merge(full)
    assert serve_command(full)[3] == "/output/full-1p5b"
    vllm_merged = serve_command(load_run("qlora-multinode-zero2"))
    assert vllm_merged[:3] == serving.VLLM_COMMAND
    assert "--tensor-parallel-size" in vllm_merged and "--enable-lora" not in vllm_merged


def test_vllm_serves_an_unmerged_adapter_with_a_rank_it_accepts() -> None:
    run = load_run("kueue-queued")
    decision = serving.vllm_decision(run)
    assert decision.mode == "lora" and decision.max_lora_rank == 32
    assert not serving.needs_merge(run)
    assert serve_command(run)[3:] == [
        "--model", "Qwen/Qwen2.5-7B-Instruct", "--enable-lora", "--max-lora-rank", "32",
        "--max-loras", "1", "--lora-modules", "queued-lora=/output/queued-lora",
        "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip


def test_vllm_decision_forces_a_merge_for_unservable_adapters() -> None:
    run = load_run("kueue-queued")
    lora = run.spec.lora.model_copy(update={"target_modules": ["q_proj", "lm_head"]})
    odd = Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"lora": lora})
    )
    assert serving.vllm_decision(odd).requires_merge
    assert serving.needs_merge(odd)
    assert serving.build_serve_target(odd) == serving.ServeTarget(
        model="/output/queued-lora/merged"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"r": 1024, "alpha": 2048}, "LoRA rank 1024 is above vLLM's largest --max-lora-rank 512"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
    ],
)
def test_merge_disabled_still_merges_what_vllm_cant_serve_unmerged(
    change: dict[str, Any], reason: str
) -> None:
    run = load_run("kueue-queued")  # vLLM, merge.enabled false, rank 32: served unmerged
    assert not run.spec.merge.enabled and not serving.needs_merge(run)
    lora = run.spec.lora.model_copy(update=change)
    odd = Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"lora": lora})
    )
    assert reason in " ".join(serving.vllm_decision(odd).reasons)
    assert serving.needs_merge(odd)
    assert serving.build_serve_target(odd).model == "/output/queued-lora/merged"


def test_vllm_decision_merges_when_expert_targets_are_left_to_the_architecture() -> None:
    run = load_run("kueue-queued")  # sets lora.targetParameters: []
    lora = run.spec.lora.model_copy(update={"target_parameters": None})
    auto = Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"lora": lora})
    )
    decision = serving.vllm_decision(auto)
    assert decision.requires_merge
    assert decision.reasons == (
        "lora.targetParameters is unset: on a MoE base the adapter holds expert tensors, "
        "which vLLM serves only merged; set lora.targetParameters: [] (a dense base, or "
        "experts left frozen) to serve the adapter unmerged",
    )
    assert serving.needs_merge(auto)
    experts = lora.model_copy(update={"target_parameters": ["mlp.experts.gate_up_proj"]})
    explicit = Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"lora": experts})
    )
    assert "target_parameters" in serving.vllm_decision(explicit).reasons[0]
    router = run.spec.lora.model_copy(update={"train_router": True})
    routed = Run(
        name=run.name, namespace="ml", uid="u", spec=run.spec.model_copy(update={"lora": router})
    )
    assert "modules_to_save ['mlp.gate']" in serving.vllm_decision(routed).reasons[0]


def test_builtin_adapter_target_and_probes() -> None:
    run = load_run("lora-single-gpu")
    spec = run.spec.model_copy(
        update={"merge": run.spec.merge.model_copy(update={"enabled": False})}
    )
    unmerged = Run(name=run.name, namespace="ml", uid="u", spec=spec)
    target = serving.build_serve_target(unmerged)
    assert target == serving.ServeTarget(
        model="Qwen/Qwen2.5-7B-Instruct", adapter="/output/support-lora", revision="main"
    )
    args = serving.build_builtin_args(unmerged, target)
    assert args[2:8] == [
        "--model", "Qwen/Qwen2.5-7B-Instruct", "--revision", "main",
        "--adapter", "support-assistant=/output/support-lora",
    ]  # fmt: skip
    container = serving.build_serve_deployment(unmerged, target)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert serving.endpoint_url(run) == "http://support-lora-serve.ml.svc:8000/v1"
    inference = run.spec.inference.model_copy(update={"max_model_len": 4096})
    longer = Run(
        name=run.name,
        namespace="ml",
        uid="u",
        spec=spec.model_copy(update={"inference": inference}),
    )
    assert serving.build_builtin_args(longer, target)[-2:] == ["--max-model-len", "4096"]


def with_inference(run: Run, *, merge_enabled: bool | None = None, **fields: Any) -> Run:
    """``run`` with spec.inference fields (and merge.enabled) changed."""
    spec = run.spec.model_copy(update={"inference": run.spec.inference.model_copy(update=fields)})
    if merge_enabled is not None:
        merge_spec = spec.merge.model_copy(update={"enabled": merge_enabled})
        spec = spec.model_copy(update={"merge": merge_spec})
    return Run(name=run.name, namespace="ml", uid="u", spec=spec)


def test_a_chosen_checkpoint_is_resolved_by_the_merge_job() -> None:
    run = with_inference(load_run("qlora-multinode-zero2"), checkpoint="best")
    assert merge.build_merge_args(run)[-2:] == ["--checkpoint", "best"]
    rules = merge.build_merge_job(run)["spec"]["podFailurePolicy"]["rules"]
    fail_job = next(rule for rule in rules if rule["action"] == "FailJob")
    assert fail_job["onExitCodes"]["values"] == [1, 2, merge.CHECKPOINT_NOT_FOUND_EXIT_CODE]
    # the merged model holds that checkpoint: vLLM serves it as it is
    assert "--checkpoint" not in serve_command(run)
    assert "--checkpoint" not in merge.build_merge_args(load_run("qlora-multinode-zero2"))


def test_a_chosen_checkpoint_is_resolved_by_the_builtin_server() -> None:
    run = with_inference(load_run("lora-single-gpu"), checkpoint=900, merge_enabled=False)
    target = serving.build_serve_target(run)
    assert target.adapter == "/output/support-lora" and target.checkpoint == "900"
    args = serving.build_builtin_args(run, target)
    assert args[args.index("--checkpoint") : args.index("--checkpoint") + 2] == [
        "--checkpoint", "900",
    ]  # fmt: skip
    full = with_inference(load_run("full-finetune"), checkpoint="best")
    command = serve_command(full)
    assert command[3] == "/output/full-1p5b" and command[-2:] != ["--checkpoint", "best"]
    assert "--checkpoint" in command and command[command.index("--checkpoint") + 1] == "best"


def test_vllm_merges_a_chosen_checkpoint_it_could_serve_unmerged() -> None:
    run = load_run("kueue-queued")
    assert not serving.needs_merge(run)
    chosen = with_inference(run, checkpoint=200)
    assert serving.needs_merge(chosen)
    assert serving.build_serve_target(chosen) == serving.ServeTarget(
        model="/output/queued-lora/merged"
    )
    assert merge.build_merge_args(chosen)[-2:] == ["--checkpoint", "200"]


BUILDERS: list[Callable[[Run], dict[str, Any]]] = [
    config.build_config_map,
    training.build_headless_service,
    training.build_train_job,
    validation.build_validation_job,
    merge.build_merge_job,
    serving.build_serve_service,
]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_builders_use_child_names(builder: Callable[[Run], Any]) -> None:
    run = load_run("lora-single-gpu")
    assert builder(run)["metadata"]["name"] in vars(run.names).values()
