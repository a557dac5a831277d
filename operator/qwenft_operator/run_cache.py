"""The newest copy of each run the operator has seen, and its parsed spec.

Watch events and the answers to the operator's own status patches both carry the run, so a
reconcile woken by a child needs no read: :meth:`RunCache.body` is the copy to decide on.
Parsing a spec (pydantic, the operator settings) is done once per (uid, generation) and
reused by every reconcile and progress read of that generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwenft_operator.metrics import RunKey
from qwenft_operator.parsed_run import Run
from qwenft_operator.settings import OperatorConfig


def resource_version(body: Mapping[str, Any]) -> int:
    """metadata.resourceVersion as a number (etcd revisions only grow)."""
    value = str(body.get("metadata", {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0


class RunCache:
    """Bodies by run, newest wins; parsed runs by (uid, generation)."""

    def __init__(self, settings: OperatorConfig) -> None:
        self.settings = settings
        self._bodies: dict[RunKey, dict[str, Any]] = {}
        self._runs: dict[RunKey, tuple[tuple[str, int], Run]] = {}

    def remember(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """Keep ``body`` if it is at least as new as the copy held."""
        held = self._bodies.get(key)
        if held is None or resource_version(body) >= resource_version(held):
            self._bodies[key] = dict(body)

    def body(self, key: RunKey) -> dict[str, Any] | None:
        return self._bodies.get(key)

    def holds(self, key: RunKey) -> bool:
        return key in self._bodies or key in self._runs

    def seen(self, key: RunKey, body: Mapping[str, Any]) -> bool:
        """A copy at least as new as ``body`` is held (an echo of the operator's own patch)."""
        held = self._bodies.get(key)
        return held is not None and resource_version(body) <= resource_version(held)

    def drop_body(self, key: RunKey) -> None:
        """Read the run afresh next time (it may be gone, or going)."""
        self._bodies.pop(key, None)

    def run_of(self, key: RunKey, body: Mapping[str, Any]) -> Run:
        """The parsed run; raises pydantic's ValidationError for a spec that isn't valid."""
        meta = body["metadata"]
        version = (str(meta.get("uid") or ""), int(meta.get("generation") or 1))
        held = self._runs.get(key)
        if held is not None and held[0] == version:
            return held[1]
        run = Run.from_body(body, self.settings)
        self._runs[key] = (version, run)
        return run

    def in_phase(self, phase: str) -> list[tuple[RunKey, dict[str, Any]]]:
        """(key, body) of every held run whose newest copy is in ``phase``."""
        return [
            (key, body)
            for key, body in list(self._bodies.items())
            if (body.get("status") or {}).get("phase") == phase
        ]

    def forget(self, key: RunKey) -> None:
        self._bodies.pop(key, None)
        self._runs.pop(key, None)
