"""A run as the builders see it: its identity, its typed spec and the operator settings.

Every ``build_*`` function takes one :class:`Run` whole, instead of a dozen loose
arguments; handlers make it from the object kopf hands them with :meth:`Run.from_body`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qwenft_operator import labels
from qwenft_operator.names import ChildNames
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.spec import API_VERSION, KIND, QwenFineTuneSpec


@dataclass(frozen=True)
class Run:
    """One ``QwenFineTune``: metadata the children need, the spec, and the settings."""

    name: str
    namespace: str
    uid: str
    spec: QwenFineTuneSpec
    settings: OperatorConfig = field(default_factory=OperatorConfig)
    generation: int = 1

    @property
    def names(self) -> ChildNames:
        return ChildNames.for_run(self.name)

    @property
    def trainer_image(self) -> str:
        return self.spec.images.trainer or self.settings.trainer_image

    @property
    def gpu_resource(self) -> str:
        return self.spec.resources.gpu_resource_name or self.settings.gpu_resource

    @property
    def served_model_name(self) -> str:
        return self.spec.inference.served_model_name or self.name

    def owner_reference(self) -> dict[str, Any]:
        """The ownerReference every child carries: deleting the run deletes the child."""
        return labels.owner_reference(API_VERSION, KIND, self.name, self.uid)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], settings: OperatorConfig | None = None) -> Run:
        """A run from a ``QwenFineTune`` object as the API returns it.

        Raises ``pydantic.ValidationError`` when the spec is not valid (an object stored
        before a stricter CRD was installed, say).
        """
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
            spec=QwenFineTuneSpec.model_validate(body.get("spec") or {}),
            settings=settings or OperatorConfig(),
        )
