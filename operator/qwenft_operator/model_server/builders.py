"""The server's Deployment and Service: one base model, every accepted adapter.

Pure functions of a :class:`Server` and its accepted adapters. vLLM gets
``--enable-lora`` with one ``--lora-modules name=path`` per adapter, ``--max-loras``,
``--max-cpu-loras`` and a ``--max-lora-rank`` rounded up to a value it accepts
(:func:`qwenft_trainer.vllm_serving.round_up_lora_rank`); the builtin server gets one
``--adapter name=path`` per adapter. Each claim holding adapters is mounted read-only at
``/adapters/<claim>``. The pod template carries a hash of the adapter set, so a change of
the set is a change of the template; the Deployment carries a digest of its whole spec
(``labels.SPEC_DIGEST_ANNOTATION``), which the decision compares, so any change of what
it would be built as (the set, replicas, image, resources) replaces it. It rolls one new
pod at a time, each taking traffic only once ready (``maxUnavailable: 0``), while the old
ones finish what they serve (a preStop pause lets the Service drop them before they stop).

It is over 300 lines because the Deployment of a server is one object: its two engines'
command lines, volumes, probes and rollout are built together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwenft_trainer import vllm_serving as rules

from qwenft_operator import labels
from qwenft_operator.builders import paths, pods
from qwenft_operator.builders.serving import (
    SERVE_PORT,
    STARTUP_PROBE_FAILURES,
    STARTUP_PROBE_PERIOD,
    VLLM_COMMAND,
)
from qwenft_operator.model_server.adapters import ADAPTERS_DIR, PlannedAdapter
from qwenft_operator.model_server.spec import API_VERSION, KIND, QwenModelServerSpec
from qwenft_operator.names import child_name
from qwenft_operator.settings import OperatorConfig

SERVER_KEY = "finetune.qwenft.io/server"  # the QwenModelServer's name, on its children
ADAPTERS_HASH_ANNOTATION = "finetune.qwenft.io/adapters-hash"
# Seconds a stopping pod keeps answering while the Service stops sending it requests.
DRAIN_SECONDS = 10
TERMINATION_GRACE_SECONDS = 120


@dataclass(frozen=True)
class Server:
    """One ``QwenModelServer``: identity, spec and the operator settings."""

    name: str
    namespace: str
    uid: str
    spec: QwenModelServerSpec
    settings: OperatorConfig = field(default_factory=OperatorConfig)
    generation: int = 1

    @property
    def deployment_name(self) -> str:
        return child_name(self.name, "server")

    @property
    def service_name(self) -> str:
        return child_name(self.name, "server")

    @property
    def gpu_resource(self) -> str:
        return self.settings.gpu_resource

    def owner_reference(self) -> dict[str, Any]:
        """The ownerReference every child carries: deleting the server deletes the child."""
        return labels.owner_reference(API_VERSION, KIND, self.name, self.uid)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], settings: OperatorConfig | None = None) -> Server:
        """A server from its object; raises ``pydantic.ValidationError`` on a bad spec."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
            spec=QwenModelServerSpec.model_validate(body.get("spec") or {}),
            settings=settings or OperatorConfig(),
        )


def server_labels(server: Server) -> dict[str, str]:
    return {labels.MANAGED_BY_KEY: labels.MANAGED_BY, SERVER_KEY: server.name,
            labels.COMPONENT_KEY: "serve"}  # fmt: skip


def server_selector(server: Server) -> dict[str, str]:
    return {SERVER_KEY: server.name, labels.COMPONENT_KEY: "serve"}


def endpoint_url(server: Server) -> str:
    return f"http://{server.service_name}.{server.namespace}.svc:{SERVE_PORT}/v1"


def _metadata(server: Server, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": server.namespace,
        "labels": server_labels(server),
        "ownerReferences": [server.owner_reference()],
    }


def model_location(server: Server) -> str:
    model = server.spec.model
    if model.hub is not None:
        return model.hub.id
    if model.pvc is not None:
        return f"{paths.MODEL_DIR}/{model.pvc.path}"
    assert model.path is not None
    return model.path


def adapter_modules(adapters: Sequence[PlannedAdapter]) -> dict[str, str]:
    """Served name -> adapter path of each accepted adapter, in order."""
    return {a.status.name: str(a.status.path) for a in adapters if a.accepted}


def max_lora_rank(server: Server, adapters: Sequence[PlannedAdapter]) -> int:
    """``--max-lora-rank``: the spec's, or the largest rank rounded up to one vLLM accepts."""
    vllm = server.spec.vllm
    if vllm is not None and vllm.max_lora_rank is not None:
        allowed = rules.round_up_lora_rank(vllm.max_lora_rank)
        assert allowed is not None  # the spec bounds it by vLLM's largest
        return allowed
    largest = max((a.status.rank or 1) for a in adapters if a.accepted)
    allowed = rules.round_up_lora_rank(largest)
    assert allowed is not None  # adapters above vLLM's largest rank are refused
    return allowed


def build_vllm_args(server: Server, adapters: Sequence[PlannedAdapter]) -> list[str]:
    """vLLM OpenAI server arguments (after ``VLLM_COMMAND``)."""
    spec = server.spec
    modules = adapter_modules(adapters)
    vllm = spec.vllm
    max_loras = vllm.max_loras if vllm and vllm.max_loras else len(modules)
    cpu_loras = vllm.max_cpu_loras if vllm and vllm.max_cpu_loras else max(len(modules), max_loras)
    args = ["--model", model_location(server), "--served-model-name", server.name]
    revision = spec.model.hub.revision if spec.model.hub else None
    if revision:
        args += ["--revision", revision, "--tokenizer-revision", revision]
    args += rules.lora_args(
        modules,
        max_lora_rank=max_lora_rank(server, adapters),
        max_loras=max_loras,
        max_cpu_loras=cpu_loras,
    )
    args += ["--host", "0.0.0.0", "--port", str(SERVE_PORT)]
    if spec.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.gpus)]
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def build_builtin_args(server: Server, adapters: Sequence[PlannedAdapter]) -> list[str]:
    """``qwenft serve`` command line with one ``--adapter`` per adapter."""
    spec = server.spec
    args = ["qwenft", "serve", "--model", model_location(server)]
    revision = spec.model.hub.revision if spec.model.hub else None
    if revision:
        args += ["--revision", revision]
    args += ["--served-model-name", server.name]
    for name, path in adapter_modules(adapters).items():
        args += ["--adapter", f"{name}={path}"]
    args += ["--host", "0.0.0.0", "--port", str(SERVE_PORT)]
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    return args


def adapters_hash(adapters: Sequence[PlannedAdapter]) -> str:
    """A short hash of the served set (names, paths, ranks), on the pod template."""
    served = [[a.status.name, a.status.path, a.status.rank] for a in adapters if a.accepted]
    return labels.spec_digest(served)


def _claims(adapters: Sequence[PlannedAdapter]) -> list[str]:
    return sorted({a.claim for a in adapters if a.claim is not None})


def _volumes(server: Server, adapters: Sequence[PlannedAdapter]) -> list[dict[str, Any]]:
    model = server.spec.model
    out: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if model.pvc is not None:
        claim = {"claimName": model.pvc.claim_name, "readOnly": True}
        out.append({"name": "model", "persistentVolumeClaim": claim})
    if model.cache is not None:
        out.append({"name": "model-cache",
                    "persistentVolumeClaim": {"claimName": model.cache.claim_name}})  # fmt: skip
    for i, claim_name in enumerate(_claims(adapters)):
        claim = {"claimName": claim_name, "readOnly": True}
        out.append({"name": f"adapters-{i}", "persistentVolumeClaim": claim})
    if server.spec.engine == "vllm":
        out.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}})
    return out


def _volume_mounts(server: Server, adapters: Sequence[PlannedAdapter]) -> list[dict[str, Any]]:
    model = server.spec.model
    out: list[dict[str, Any]] = [{"name": "tmp", "mountPath": paths.TMP_DIR}]
    if model.pvc is not None:
        out.append({"name": "model", "mountPath": paths.MODEL_DIR, "readOnly": True})
    if model.cache is not None:
        out.append({"name": "model-cache", "mountPath": paths.CACHE_DIR})
    for i, claim_name in enumerate(_claims(adapters)):
        out.append({"name": f"adapters-{i}", "mountPath": f"{ADAPTERS_DIR}/{claim_name}",
                    "readOnly": True})  # fmt: skip
    if server.spec.engine == "vllm":
        out.append({"name": "shm", "mountPath": paths.SHM_DIR})
    return out


def _env(server: Server) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": paths.TMP_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    hub = server.spec.model.hub
    if hub is not None and hub.token_secret_ref is not None:
        ref = {"name": hub.token_secret_ref.name, "key": hub.token_secret_ref.key}
        env.append({"name": pods.TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
    if server.spec.model.cache is not None:
        env.append({"name": "HF_HOME", "value": paths.HF_HOME})
    return env


def _probe(path: str, **extra: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, **extra}


def build_server_deployment(server: Server, adapters: Sequence[PlannedAdapter]) -> dict[str, Any]:
    """Deployment ``<server>-server`` serving the base and every accepted adapter."""
    spec = server.spec
    vllm = spec.engine == "vllm"
    images = spec.images
    if vllm:
        image = images.server or server.settings.vllm_image
        command = [*VLLM_COMMAND, *build_vllm_args(server, adapters)]
        ready, live = "/health", "/health"
    else:
        image = images.server or images.trainer or server.settings.trainer_image
        command = build_builtin_args(server, adapters)
        ready, live = "/readyz", "/healthz"
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        **({"imagePullPolicy": images.pull_policy} if images.pull_policy else {}),
        "command": command,
        "env": _env(server),
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        "resources": pods.resources(
            spec.resources, gpus=spec.gpus, gpu_resource=server.gpu_resource
        ),
        "startupProbe": _probe(
            live, periodSeconds=STARTUP_PROBE_PERIOD, failureThreshold=STARTUP_PROBE_FAILURES
        ),
        "readinessProbe": _probe(ready, periodSeconds=5, failureThreshold=3),
        "livenessProbe": _probe(live, periodSeconds=20, failureThreshold=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "volumeMounts": _volume_mounts(server, adapters),
        "securityContext": pods.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    sched = spec.scheduling
    pod_spec: dict[str, Any] = {
        "securityContext": pods.pod_security_context(),
        **pods.placement(sched.node_selector, sched.tolerations, sched.affinity),
    }
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if sched.scheduler_name:
        pod_spec["schedulerName"] = sched.scheduler_name
    if images.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in images.pull_secrets]
    pod_spec["terminationGracePeriodSeconds"] = TERMINATION_GRACE_SECONDS
    pod_spec["volumes"] = _volumes(server, adapters)
    pod_spec["containers"] = [container]
    digest = adapters_hash(adapters)
    metadata = _metadata(server, server.deployment_name)
    deployment_spec: dict[str, Any] = {
        "replicas": spec.replicas,
        "selector": {"matchLabels": server_selector(server)},
        # A new pod takes traffic only once ready; an old one goes only after that.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": server_labels(server),
                "annotations": {ADAPTERS_HASH_ANNOTATION: digest},
            },
            "spec": pod_spec,
        },
    }
    # The whole spec's digest decides a roll (a new adapter set, replicas, image, ...).
    metadata["annotations"] = {
        ADAPTERS_HASH_ANNOTATION: digest,
        labels.SPEC_DIGEST_ANNOTATION: labels.spec_digest(deployment_spec),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": deployment_spec,
    }


def build_server_service(server: Server) -> dict[str, Any]:
    """Service ``<server>-server`` on port 8000 (status.endpoint.url)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(server, server.service_name),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(server),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http"}],
        },
    }
