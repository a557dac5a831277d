"""The operator's index of ``QwenFineTune`` objects, as servers read them.

Every run event of the cluster lands here, so a record keeps the raw body and the few status
facts servers decide on; the controller parses a spec once per generation, and only for
namespaces that have a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qwenft_operator import conditions as cond


@dataclass(frozen=True)
class FineTuneRecord:
    """A ``QwenFineTune`` as the index keeps it: raw, so indexing every run event of the
    cluster costs no spec validation; ``ServerController.facts_of`` parses it once per
    generation, and only for namespaces that have a server."""

    name: str
    uid: str
    generation: int
    labels: tuple[tuple[str, str], ...]
    body: Mapping[str, Any] = field(compare=False, repr=False)
    phase: str | None = None
    trained: bool = False
    deleting: bool = False

    def signature(self) -> tuple[Any, ...]:
        """What servers read of the run: a status patch that changes none of it (training
        progress) wakes no server."""
        return (self.generation, self.labels, self.phase, self.trained, self.deleting)


def record_fine_tune(body: Mapping[str, Any]) -> FineTuneRecord:
    """What servers need of a ``QwenFineTune`` body (for the operator's index)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    trained = any(
        c.get("type") == cond.TRAINED and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return FineTuneRecord(
        name=str(meta["name"]),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 1),
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        body={"metadata": dict(meta), "spec": body.get("spec") or {}},
        phase=status.get("phase"),
        trained=trained,
        deleting=bool(meta.get("deletionTimestamp")),
    )
