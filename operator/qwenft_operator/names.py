"""Deterministic names of a run's children.

A restarted operator finds what it already made by name, so names depend on the run's
name alone. Names that are too long for their kind are cut and given a short hash of the
full name, so two long run names never collide.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# DNS-1035 label limit: Service names, label values, pod hostnames.
MAX_NAME_LENGTH = 63
# Indexed Job pods are named and hostnamed '<job>-<index>'; keep room for a 5-digit index.
MAX_TRAIN_NAME_LENGTH = MAX_NAME_LENGTH - 6
_HASH_LENGTH = 6


def child_name(run: str, suffix: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """``<run>-<suffix>``, or ``<run prefix>-<hash>-<suffix>`` when that is too long."""
    full = f"{run}-{suffix}"
    if len(full) <= max_length:
        return full
    digest = hashlib.sha256(run.encode()).hexdigest()[:_HASH_LENGTH]
    keep = max_length - len(suffix) - _HASH_LENGTH - 2
    if keep < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for the run name in {max_length}")
    return f"{run[:keep].rstrip('-')}-{digest}-{suffix}"


@dataclass(frozen=True)
class ChildNames:
    """Names of everything one run owns; build with :meth:`for_run`."""

    validate_job: str
    config_map: str
    train_service: str
    train_job: str
    merge_job: str
    serve_deployment: str
    serve_service: str

    @classmethod
    def for_run(cls, run: str) -> ChildNames:
        train = child_name(run, "train", max_length=MAX_TRAIN_NAME_LENGTH)
        serve = child_name(run, "serve")
        return cls(
            validate_job=child_name(run, "validate"),
            config_map=child_name(run, "config"),
            train_service=train,
            train_job=train,
            merge_job=child_name(run, "merge"),
            serve_deployment=serve,
            serve_service=serve,
        )
