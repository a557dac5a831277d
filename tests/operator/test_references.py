"""What a run's children mount, and how missing ones are told apart (no cluster).

Covers: the Secrets, ConfigMaps and claims each shipped example names (each once;
ConfigMap keys included; Secrets named, never read); what a pod spec mounts (volumes,
projected sources, ``env`` key refs, ``envFrom``; optional ones and image pull Secrets left
out); for every shipped example and every child (validation, training and merge Jobs, the
server Deployment), each object the built pod spec mounts is one the spec names, so every
condition message can name its spec field; which child mounts what; missing objects and
missing ConfigMap keys (an object not known is taken as present); the retry schedule for a
missing Secret; recent lookups expiring (found ones after 10 s, absent ones after 1 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qwenft_operator import reference_checks
from qwenft_operator.builders import merge, serving, training, validation
from qwenft_operator.parsed_run import Run
from qwenft_operator.references import (
    Found,
    RecentLookups,
    Reference,
    build_references,
    is_missing,
    missing,
    named_by_spec,
    pod_references,
    secret_retry_after,
    template_references,
)
from qwenft_operator.spec import load_manifest

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted(
    p.stem for p in (ROOT / "examples").glob("*.yaml") if "\nkind: QwenFineTune\n" in p.read_text()
)


def load_run(example: str) -> Run:
    manifest = load_manifest(ROOT / "examples" / f"{example}.yaml")
    return Run(name=manifest.metadata.name, namespace="team", uid="u1", spec=manifest.spec)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("lora-single-gpu", [
            Reference("secret", "hf-token", "model.hub.tokenSecretRef"),
            Reference("configmap", "support-chats", "dataset.configMap", "train.jsonl"),
            Reference("persistentvolumeclaim", "qwenft-runs", "output.pvc"),
        ]),
        ("qlora-multinode-zero2", [
            Reference("secret", "hf-token", "model.hub.tokenSecretRef"),
            Reference("persistentvolumeclaim", "model-cache", "model.cache"),
            Reference("persistentvolumeclaim", "datasets", "dataset.pvc"),
            Reference("persistentvolumeclaim", "qwenft-runs", "output.pvc"),
        ]),
        ("full-finetune", [
            Reference("persistentvolumeclaim", "models", "model.pvc"),
            Reference("persistentvolumeclaim", "qwenft-runs", "output.pvc"),
        ]),
        ("kueue-queued", [
            Reference("secret", "s3-credentials", "dataset.url.credentialsSecret"),
            Reference("persistentvolumeclaim", "qwenft-runs", "output.pvc"),
        ]),
    ],
)  # fmt: skip
def test_references_of_the_examples(example: str, expected: list[Reference]) -> None:
    spec = load_manifest(ROOT / "examples" / f"{example}.yaml").spec
    assert build_references(spec) == expected
    assert (
        Reference("secret", "hf-token", "model.hub.tokenSecretRef").describe()
        == "secret hf-token for spec.model.hub.tokenSecretRef"
    )


def test_pod_references_read_volumes_env_and_env_from() -> None:
    pod_spec = {
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "data", "configMap": {"name": "chats"}},
            {"name": "maybe", "configMap": {"name": "extra", "optional": True}},
            {"name": "out", "persistentVolumeClaim": {"claimName": "runs"}},
            {"name": "certs", "secret": {"secretName": "tls"}},
            {"name": "both", "projected": {"sources": [{"configMap": {"name": "ca"}}]}},
        ],
        "initContainers": [{"name": "fetch", "envFrom": [{"secretRef": {"name": "s3"}}]}],
        "containers": [
            {
                "name": "main",
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "m"}}},
                    {
                        "name": "OPT",
                        "valueFrom": {"secretKeyRef": {"name": "o", "key": "k", "optional": True}},
                    },
                ],
                "envFrom": [{"configMapRef": {"name": "settings"}}],
            }
        ],
    }
    assert pod_references(pod_spec) == (
        Reference("configmap", "chats", "volume data"),
        Reference("persistentvolumeclaim", "runs", "volume out"),
        Reference("secret", "tls", "volume certs"),
        Reference("configmap", "ca", "volume both"),
        Reference("secret", "s3", "envFrom of container fetch"),
        Reference("secret", "hf", "env TOKEN of container main", "t"),
        Reference("configmap", "c", "env MODE of container main", "m"),
        Reference("configmap", "settings", "envFrom of container main"),
    )
    assert Reference("configmap", "chats", "volume data").describe() == (
        "configmap chats for volume data"
    )


def children_of(run: Run) -> dict[str, dict[str, object]]:
    bodies = {
        "validate": validation.build_validation_job(run),
        "train": training.build_train_job(run),
        "serve": serving.build_serve_deployment(run, serving.build_serve_target(run)),
    }
    if serving.needs_merge(run):
        bodies["merge"] = merge.build_merge_job(run)
    return bodies


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_object_a_child_mounts_is_named_by_the_spec(example: str) -> None:
    run = load_run(example)
    named = {ref.object for ref in build_references(run.spec)}
    for component, body in children_of(run).items():
        mounted = template_references(body)
        others = {r.object for r in mounted} - named - {("configmap", run.names.config_map)}
        assert not others, f"{example} {component} mounts {others}, which no spec field names"
        for ref in reference_checks.child_references(run, body):
            assert " " not in ref.field, (example, component, ref)  # a spec field


def test_which_child_mounts_what() -> None:
    run = load_run("lora-single-gpu")
    mounted = {
        component: sorted(f"{r.kind} {r.name}" for r in template_references(body))
        for component, body in children_of(run).items()
    }
    token, dataset, output = (
        "secret hf-token",
        "configmap support-chats",
        ("persistentvolumeclaim qwenft-runs"),
    )
    config = f"configmap {run.names.config_map}"
    assert mounted == {
        # the validation Job writes the token cache onto the output claim
        "validate": sorted([token, dataset, output]),
        "train": sorted([token, dataset, output, config]),
        "merge": sorted([token, output]),
        "serve": sorted([token, output]),
    }
    train = reference_checks.child_references(run, children_of(run)["train"])
    assert Reference("configmap", "support-chats", "dataset.configMap", "train.jsonl") in train
    assert all(r.name != run.names.config_map for r in train)  # made in the same step
    url_run = load_run("kueue-queued")
    fetch = template_references(validation.build_validation_job(url_run))
    assert Reference("secret", "s3-credentials", "envFrom of container fetch-dataset") in fetch


def test_missing_objects_and_keys() -> None:
    dataset = Reference("configmap", "chats", "dataset.configMap", "train.jsonl")
    token = Reference("secret", "hf", "model.hub.tokenSecretRef", "token")
    claim = Reference("persistentvolumeclaim", "runs", "output.pvc")
    assert not is_missing(dataset, {})  # not known: taken as present
    assert is_missing(dataset, {dataset.object: None})
    assert is_missing(dataset, {dataset.object: Found(keys=frozenset({"eval.jsonl"}))})
    assert not is_missing(dataset, {dataset.object: Found(keys=frozenset({"train.jsonl"}))})
    assert not is_missing(dataset, {dataset.object: Found()})  # keys not read
    assert not is_missing(token, {token.object: Found(keys=frozenset())})  # Secret keys unread
    known = {token.object: None, claim.object: Found(), dataset.object: Found(frozenset())}
    assert missing([token, claim, dataset], known) == [token, dataset]


def test_named_by_spec_gives_fields_and_keys() -> None:
    run = load_run("lora-single-gpu")
    pod = (
        Reference("configmap", "support-chats", "volume data"),
        Reference("configmap", run.names.config_map, "volume config"),
        Reference("secret", "other", "volume x"),
    )
    assert named_by_spec(run.spec, pod, {run.names.config_map}) == [
        Reference("configmap", "support-chats", "dataset.configMap", "train.jsonl"),
        Reference("secret", "other", "volume x"),
    ]


def test_a_missing_secret_is_looked_for_soon_then_less_often() -> None:
    assert [secret_retry_after(s) for s in (0, 9, 10, 59, 60, 3600)] == [1, 1, 2, 2, 5, 5]


def test_recent_lookups_expire() -> None:
    now = [100.0]
    lookups = RecentLookups(found_ttl=10.0, absent_ttl=1.0, clock=lambda: now[0])
    claim, secret = ("persistentvolumeclaim", "runs"), ("secret", "hf")
    assert lookups.get("team", claim) == (False, None)
    lookups.record("team", claim, Found())
    lookups.record("team", secret, None)
    now[0] += 0.9
    assert lookups.get("team", claim) == (True, Found())
    assert lookups.get("team", secret) == (True, None)
    assert lookups.get("other-team", claim) == (False, None)  # per namespace
    now[0] += 0.2
    assert lookups.get("team", secret) == (False, None)  # absent: looked up again
    now[0] += 9.0
    assert lookups.get("team", claim) == (False, Found())
    lookups.record("team", claim, Found())
    lookups.forget("team", claim)
    assert lookups.get("team", claim) == (False, None)
