"""The Secrets, ConfigMaps and claims a run reads, so they can be checked before it starts.

A run whose token Secret or dataset ConfigMap is missing would otherwise sit with pods
stuck in ``ContainerCreating``; checking first turns that into a ``MissingReference``
condition naming the object. Pure: :mod:`qwenft_operator.kube` does the lookups.
:class:`RecentlyFound` remembers, for a few seconds, which references were just seen to
exist, so that a sweep of runs sharing one dataset and one output claim looks each up once
rather than once per run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from qwenft_operator.spec import QwenFineTuneSpec

RefKind = Literal["secret", "configmap", "persistentvolumeclaim"]


@dataclass(frozen=True)
class Reference:
    """One object the run needs; ``key`` must be in it (ConfigMaps only: Secrets stay unread)."""

    kind: RefKind
    name: str
    field: str
    key: str | None = None

    def describe(self) -> str:
        key = f" (key {self.key})" if self.key else ""
        return f"{self.kind} {self.name}{key} for spec.{self.field}"


def build_references(spec: QwenFineTuneSpec) -> list[Reference]:
    """Every object ``spec`` points at, each once."""
    refs: list[Reference] = []
    hub = spec.model.hub
    if hub is not None and hub.token_secret_ref is not None:
        refs.append(Reference("secret", hub.token_secret_ref.name, "model.hub.tokenSecretRef"))
    if spec.model.pvc is not None:
        refs.append(Reference("persistentvolumeclaim", spec.model.pvc.claim_name, "model.pvc"))
    if spec.model.cache is not None:
        refs.append(Reference("persistentvolumeclaim", spec.model.cache.claim_name, "model.cache"))
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
    unique: dict[tuple[str, str, str | None], Reference] = {}
    for ref in refs:
        unique.setdefault((ref.kind, ref.name, ref.key), ref)
    return list(unique.values())


# How long a reference seen to exist is taken as still existing. Short: the check only
# turns a missing object into a clear condition before pods would get stuck on it.
FOUND_TTL_SECONDS = 10.0


class RecentlyFound:
    """References (per namespace) seen to exist less than ``ttl`` seconds ago."""

    def __init__(
        self, ttl: float = FOUND_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[tuple[str, Reference], float] = {}

    def unchecked(self, namespace: str, refs: Iterable[Reference]) -> list[Reference]:
        """The references of ``refs`` not seen to exist recently: the ones to look up."""
        now = self.clock()
        return [ref for ref in refs if now - self._seen.get((namespace, ref), -1e18) >= self.ttl]

    def record(self, namespace: str, found: Iterable[Reference]) -> None:
        """``found`` exist now; forget entries that expired."""
        now = self.clock()
        if len(self._seen) > 1024:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.ttl}
        for ref in found:
            self._seen[(namespace, ref)] = now
