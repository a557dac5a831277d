"""Pieces every pod of a run shares: metadata, security, placement, volumes, environment.

Each pod gets only the volumes its step reads or writes (:class:`Mounts`), the restricted
Pod Security Standard, the run's scheduling fields (the CPU-only validation pod places
itself), and the hub token as a ``secretKeyRef``
environment variable, the one place the token ever appears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenft_operator import labels
from qwenft_operator.builders import paths
from qwenft_operator.parsed_run import Run
from qwenft_operator.workloads import ComputeResources, ContainerResources

# Non-root user and group of the pods; fsGroup makes claims writable for it.
POD_USER = 1000
TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Mounts:
    """Which shared volumes a pod needs."""

    data: bool = False
    model: bool = False
    output: bool = False
    output_read_only: bool = False
    config: bool = False
    shm: bool = False


def object_meta(
    run: Run, name: str, component: labels.Component, *, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Metadata of a child: name, namespace, labels and the ownerReference to the run."""
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": {**labels.build_labels(run.name, component), **(extra_labels or {})},
        "ownerReferences": [run.owner_reference()],
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        "fsGroupChangePolicy": "OnRootMismatch",  # large model volumes: no recursive chown
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def placement(
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Any]],
    affinity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod spec's ``nodeSelector``, ``tolerations`` and ``affinity``, those given."""
    spec: dict[str, Any] = {}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if affinity:
        spec["affinity"] = dict(affinity)
    return spec


def pod_spec_base(run: Run, mounts: Mounts, *, run_placement: bool = True) -> dict[str, Any]:
    """Pod spec fields shared by all steps (no containers yet).

    ``run_placement=False`` leaves out ``spec.scheduling``'s node selector, tolerations
    and affinity (they place the GPU pods) for a pod that places itself.
    """
    spec: dict[str, Any] = {"securityContext": pod_security_context()}
    sched = run.spec.scheduling
    if run_placement:
        spec.update(placement(sched.node_selector, sched.tolerations, sched.affinity))
    if sched.priority_class_name:
        spec["priorityClassName"] = sched.priority_class_name
    if sched.scheduler_name:
        spec["schedulerName"] = sched.scheduler_name
    if run.spec.images.pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in run.spec.images.pull_secrets]
    spec["volumes"] = volumes(run, mounts)
    return spec


def volumes(run: Run, mounts: Mounts) -> list[dict[str, Any]]:
    spec = run.spec
    out: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    data = spec.dataset
    if mounts.data and data.config_map is not None:
        out.append({"name": "data", "configMap": {"name": data.config_map.name}})
    elif mounts.data and data.pvc is not None:
        claim = {"claimName": data.pvc.claim_name, "readOnly": True}
        out.append({"name": "data", "persistentVolumeClaim": claim})
    elif mounts.data and data.url is not None:
        out.append({"name": "data", "emptyDir": {}})
    if mounts.model and spec.model.pvc is not None:
        claim = {"claimName": spec.model.pvc.claim_name, "readOnly": True}
        out.append({"name": "model", "persistentVolumeClaim": claim})
    if mounts.model and spec.model.cache is not None:
        claim = {"claimName": spec.model.cache.claim_name}
        out.append({"name": "model-cache", "persistentVolumeClaim": claim})
    if mounts.output and spec.output.pvc is not None:
        claim = {"claimName": spec.output.pvc.claim_name}
        out.append({"name": "output", "persistentVolumeClaim": claim})
    if mounts.config:
        out.append({"name": "config", "configMap": {"name": run.names.config_map}})
    if mounts.shm:
        shm = {"medium": "Memory", "sizeLimit": spec.resources.shared_memory_size}
        out.append({"name": "shm", "emptyDir": shm})
    return out


def volume_mounts(run: Run, mounts: Mounts) -> list[dict[str, Any]]:
    """Mounts matching :func:`volumes` (by volume name)."""
    present = {v["name"] for v in volumes(run, mounts)}
    table = [
        ("tmp", paths.TMP_DIR, False),
        ("data", paths.DATA_DIR, True),
        ("model", paths.MODEL_DIR, True),
        ("model-cache", paths.CACHE_DIR, False),
        ("output", paths.OUTPUT_DIR, mounts.output_read_only),
        ("config", paths.CONFIG_DIR, True),
        ("shm", paths.SHM_DIR, False),
    ]
    out = []
    for name, path, read_only in table:
        if name in present:
            mount: dict[str, Any] = {"name": name, "mountPath": path}
            if read_only:
                mount["readOnly"] = True
            out.append(mount)
    return out


def model_env(run: Run) -> list[dict[str, Any]]:
    """HOME, the hub token (secretKeyRef only) and the shared cache location."""
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": paths.TMP_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    hub = run.spec.model.hub
    if hub is not None and hub.token_secret_ref is not None:
        ref = {"name": hub.token_secret_ref.name, "key": hub.token_secret_ref.key}
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
    if run.spec.model.cache is not None:
        env.append({"name": "HF_HOME", "value": paths.HF_HOME})
    return env


def trainer_container(
    run: Run,
    *,
    name: str,
    command: list[str],
    resources: dict[str, Any],
    mounts: Mounts,
    **fields: Any,
) -> dict[str, Any]:
    """A container of the trainer image: what the validate, train and merge pods share.

    ``fields`` adds or replaces container fields (``args``, ``env``, ``ports``, ...).
    """
    container: dict[str, Any] = {
        "name": name,
        "image": run.trainer_image,
        **image_pull_policy(run),
        "command": command,
        "env": model_env(run),
        "resources": resources,
        "volumeMounts": volume_mounts(run, mounts),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {**container, **fields}


def image_pull_policy(run: Run) -> dict[str, str]:
    policy = run.spec.images.pull_policy
    return {"imagePullPolicy": policy} if policy else {}


def resources(
    compute: ContainerResources | None,
    *,
    gpus: int = 0,
    gpu_resource: str = "",
    requests: ComputeResources | None = None,
    limits: ComputeResources | None = None,
) -> dict[str, Any]:
    """A container's resources: CPU and memory as given, GPUs as request and limit."""
    req = requests or (compute.requests if compute else None)
    lim = limits or (compute.limits if compute else None)
    out: dict[str, dict[str, Any]] = {"requests": _quantities(req), "limits": _quantities(lim)}
    if gpus:
        out["requests"][gpu_resource] = gpus
        out["limits"][gpu_resource] = gpus
    return {key: value for key, value in out.items() if value}


def _quantities(compute: ComputeResources | None) -> dict[str, Any]:
    if compute is None:
        return {}
    return {
        key: value
        for key, value in (("cpu", compute.cpu), ("memory", compute.memory))
        if value is not None
    }
