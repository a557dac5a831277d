"""The Secrets, ConfigMaps and claims a run's pods mount, so they are checked when used.

A pod whose Secret, ConfigMap or claim is missing sits in ``ContainerCreating`` (or
``CreateContainerConfigError``) with nothing on the run saying why. So what a child mounts
is read from the pod spec its builder made (:func:`pod_references`: volumes, ``env``
``valueFrom`` and ``envFrom``), for a Job or Deployment about to be created and for one
that runs; the decision checks those objects right before it creates the child, and again
while it runs. :func:`build_references` lists what the spec names, with the spec field
each comes from: all of them are checked before validation starts, and it gives each pod
reference its field (and the ConfigMap key the pods read) for the condition's message.
Pure: :mod:`qwenft_operator.kube` does the lookups, the operator's watches see ConfigMaps
and claims come and go; :class:`RecentLookups` remembers lookup answers briefly, so that
a sweep of runs sharing one dataset and one output claim looks each up once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qwenft_operator.sources import ModelSpec
from qwenft_operator.spec import QwenFineTuneSpec

RefKind = Literal["secret", "configmap", "persistentvolumeclaim"]
ObjectKey = tuple[RefKind, str]  # (kind, name) in the run's namespace


@dataclass(frozen=True)
class Reference:
    """One object a run needs; ``key`` must be in it (ConfigMaps only: Secrets stay unread).

    ``field`` is the spec field that names it (``dataset.configMap``) or, for an object no
    spec field names, where the pod uses it (``volume data``).
    """

    kind: RefKind
    name: str
    field: str
    key: str | None = None

    @property
    def object(self) -> ObjectKey:
        return (self.kind, self.name)

    def describe(self) -> str:
        key = f" (key {self.key})" if self.key else ""
        where = f"spec.{self.field}" if _is_spec_field(self.field) else self.field
        return f"{self.kind} {self.name}{key} for {where}"


def _is_spec_field(field: str) -> bool:
    return " " not in field


def model_references(model: ModelSpec) -> list[Reference]:
    """The objects a base model source points at (``spec.model`` of a run or a server)."""
    refs: list[Reference] = []
    hub = model.hub
    if hub is not None and hub.token_secret_ref is not None:
        refs.append(Reference("secret", hub.token_secret_ref.name, "model.hub.tokenSecretRef"))
    if model.pvc is not None:
        refs.append(Reference("persistentvolumeclaim", model.pvc.claim_name, "model.pvc"))
    if model.cache is not None:
        refs.append(Reference("persistentvolumeclaim", model.cache.claim_name, "model.cache"))
    return refs


def build_references(spec: QwenFineTuneSpec) -> list[Reference]:
    """Every object ``spec`` points at, each once."""
    refs = model_references(spec.model)
    data = spec.dataset
    if data.config_map is not None:
        refs.append(
            Reference("configmap", data.config_map.name, "dataset.configMap", data.config_map.key)
        )
        if spec.evaluation.file:
            refs.append(
                Reference(
                    "configmap", data.config_map.name, "evaluation.file", spec.evaluation.file
                )
            )
    if data.pvc is not None:
        refs.append(Reference("persistentvolumeclaim", data.pvc.claim_name, "dataset.pvc"))
    if data.url is not None and data.url.credentials_secret is not None:
        refs.append(
            Reference("secret", data.url.credentials_secret, "dataset.url.credentialsSecret")
        )
    if spec.output.pvc is not None:
        refs.append(Reference("persistentvolumeclaim", spec.output.pvc.claim_name, "output.pvc"))
    return unique(refs)


def unique(refs: Iterable[Reference]) -> list[Reference]:
    """``refs`` without repeats of one object and key, in order."""
    seen: dict[tuple[str, str, str | None], Reference] = {}
    for ref in refs:
        seen.setdefault((ref.kind, ref.name, ref.key), ref)
    return list(seen.values())


_KEY_REFS: tuple[tuple[str, RefKind], ...] = (
    ("secretKeyRef", "secret"),
    ("configMapKeyRef", "configmap"),
)
_SOURCE_REFS: tuple[tuple[str, RefKind], ...] = (
    ("secretRef", "secret"),
    ("configMapRef", "configmap"),
)


def pod_references(pod_spec: Mapping[str, Any]) -> tuple[Reference, ...]:
    """The objects a pod can't start without: the non-optional Secrets, ConfigMaps and
    claims of its volumes and of its containers' ``env`` and ``envFrom``.

    ``imagePullSecrets`` are left out (the kubelet pulls without a missing one).
    """
    refs: list[Reference] = []
    for volume in pod_spec.get("volumes") or []:
        where = f"volume {volume.get('name')}"
        sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
        for source in sources:
            refs += _volume_source(source, where)
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    for container in containers:
        owner = f"container {container.get('name')}"
        for var in container.get("env") or []:
            value_from = var.get("valueFrom") or {}
            for field, kind in _KEY_REFS:
                ref = value_from.get(field)
                if ref and not ref.get("optional"):
                    where = f"env {var.get('name')} of {owner}"
                    refs.append(Reference(kind, str(ref["name"]), where, ref.get("key")))
        for source in container.get("envFrom") or []:
            for field, kind in _SOURCE_REFS:
                ref = source.get(field)
                if ref and not ref.get("optional"):
                    refs.append(Reference(kind, str(ref["name"]), f"envFrom of {owner}"))
    return tuple(unique(refs))


def _volume_source(source: Mapping[str, Any], where: str) -> list[Reference]:
    claim = source.get("persistentVolumeClaim")
    if claim:
        return [Reference("persistentvolumeclaim", str(claim["claimName"]), where)]
    config_map = source.get("configMap")
    if config_map and not config_map.get("optional"):
        return [Reference("configmap", str(config_map["name"]), where)]
    secret = source.get("secret")
    if secret and not secret.get("optional"):
        return [Reference("secret", str(secret.get("secretName") or secret.get("name")), where)]
    return []


def template_references(body: Mapping[str, Any]) -> tuple[Reference, ...]:
    """:func:`pod_references` of a Job's or Deployment's pod template."""
    template = (body.get("spec") or {}).get("template") or {}
    return pod_references(template.get("spec") or {})


def named_by_spec(
    spec: QwenFineTuneSpec, pod_refs: Iterable[Reference], own: Collection[str]
) -> list[Reference]:
    """``pod_refs`` as the spec names them: each object the spec names becomes the spec's
    references to it (with their fields and keys); objects named ``own`` (the run's own
    children, such as its config ConfigMap) are left out; any other object stays as the
    pod uses it."""
    by_object: dict[ObjectKey, list[Reference]] = {}
    for ref in build_references(spec):
        by_object.setdefault(ref.object, []).append(ref)
    out: list[Reference] = []
    for ref in pod_refs:
        if ref.name in own and ref.kind == "configmap":
            continue
        out += by_object.get(ref.object, [ref])
    return unique(out)


@dataclass(frozen=True)
class Found:
    """An object that exists; ``keys`` are a ConfigMap's keys (None: not read)."""

    keys: frozenset[str] | None = None


# What is known about the run's referenced objects: Found, None when absent; an object
# not in it is not known, and taken as present.
Known = Mapping[ObjectKey, Found | None]


def is_missing(ref: Reference, known: Known) -> bool:
    """Whether ``ref`` is known to be absent, or a ConfigMap known to lack its key."""
    if ref.object not in known:
        return False
    found = known[ref.object]
    if found is None:
        return True
    return (
        ref.kind == "configmap"
        and ref.key is not None
        and found.keys is not None
        and (ref.key not in found.keys)
    )


def missing(refs: Iterable[Reference], known: Known) -> list[Reference]:
    """The references of ``refs`` known to be missing."""
    return [ref for ref in refs if is_missing(ref, known)]


def describe_all(refs: Iterable[Reference]) -> str:
    return ", ".join(ref.describe() for ref in refs)


# Seconds between looks while a Secret is missing: no watch tells the operator of a new
# Secret (it may not list Secrets), so it looks again, soon at first, then less often.
SECRET_RETRY_SECONDS = ((10.0, 1.0), (60.0, 2.0))
SECRET_RETRY_MAX_SECONDS = 5.0


def secret_retry_after(waited: float) -> float:
    """Seconds until the next look for a Secret missing for ``waited`` seconds."""
    for until, delay in SECRET_RETRY_SECONDS:
        if waited < until:
            return delay
    return SECRET_RETRY_MAX_SECONDS


# How long a lookup's answer is taken as still true: a found object for a few seconds
# (the watch of ConfigMaps and claims reports a deletion at once; the check of a Secret
# only turns a missing one into a clear condition), an absent one for one second, so runs
# waiting together on one Secret share a lookup.
FOUND_TTL_SECONDS = 10.0
ABSENT_TTL_SECONDS = 1.0


class RecentLookups:
    """Answers of recent lookups, per namespace and object, until they expire."""

    def __init__(
        self,
        found_ttl: float = FOUND_TTL_SECONDS,
        absent_ttl: float = ABSENT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.found_ttl = found_ttl
        self.absent_ttl = absent_ttl
        self.clock = clock
        self._seen: dict[tuple[str, ObjectKey], tuple[float, Found | None]] = {}

    def get(self, namespace: str, key: ObjectKey) -> tuple[bool, Found | None]:
        """(whether a fresh answer is held, the answer)."""
        held = self._seen.get((namespace, key))
        if held is None:
            return False, None
        at, answer = held
        ttl = self.found_ttl if answer is not None else self.absent_ttl
        return self.clock() - at < ttl, answer

    def record(self, namespace: str, key: ObjectKey, answer: Found | None) -> None:
        now = self.clock()
        if len(self._seen) > 4096:
            self._seen = {k: (t, a) for k, (t, a) in self._seen.items() if now - t < self.found_ttl}
        self._seen[(namespace, key)] = (now, answer)

    def forget(self, namespace: str, key: ObjectKey) -> None:
        self._seen.pop((namespace, key), None)
