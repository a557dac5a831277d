"""Label keys and values on every object the operator creates, and its ownerReference, in
one place.

The operator finds a run's children by these labels (``kopf`` filters, list selectors),
dashboards group by them, and ``kubectl get pods -l finetune.qwenft.io/name=demo`` shows a
run's pods.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "qwenft-operator"
NAME_KEY = "finetune.qwenft.io/name"  # the QwenFineTune's name
COMPONENT_KEY = "finetune.qwenft.io/component"  # which step of the run the object serves
KUEUE_QUEUE_KEY = "kueue.x-k8s.io/queue-name"  # Kueue LocalQueue of a queued Job
JOB_COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The weights a merge Job merged and a server pod template serves: spec.inference.checkpoint
# ("best" or a step) or "final" when it is unset. A merge Job or Deployment without it was
# made by an operator that did not record it and is taken as "final" (the final adapter).
CHECKPOINT_ANNOTATION = "finetune.qwenft.io/checkpoint"
FINAL_CHECKPOINT = "final"
# A digest of the spec the operator built a server Deployment with (:func:`spec_digest` of
# its replicas, strategy and pod template), on the Deployment's metadata. A Deployment
# whose digest isn't the one the run's spec builds now is replaced; one without it (made by
# an operator that did not record it) is replaced once.
SPEC_DIGEST_ANNOTATION = "finetune.qwenft.io/spec-digest"

Component = Literal["validate", "train", "merge", "serve"]
COMPONENTS: tuple[Component, ...] = ("validate", "train", "merge", "serve")


def build_labels(run: str, component: Component) -> dict[str, str]:
    """Labels of a child object (and of its pods)."""
    return {MANAGED_BY_KEY: MANAGED_BY, NAME_KEY: run, COMPONENT_KEY: component}


def checkpoint_value(choice: int | str | None) -> str:
    """The :data:`CHECKPOINT_ANNOTATION` value of a spec.inference.checkpoint choice."""
    return FINAL_CHECKPOINT if choice is None else str(choice)


def spec_digest(value: object) -> str:
    """A short stable digest of a built object (its JSON with sorted keys): equal exactly
    when the objects are. The server Deployments of runs and of QwenModelServers carry one."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def build_selector(run: str, component: Component) -> dict[str, str]:
    """Labels that select one component's pods (Service and Deployment selectors)."""
    return {NAME_KEY: run, COMPONENT_KEY: component}


def selector_string(labels: dict[str, str]) -> str:
    """``key=value,...`` for a list call's labelSelector."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


# Every object the operator manages, for watches and list calls.
MANAGED_SELECTOR = selector_string({MANAGED_BY_KEY: MANAGED_BY})


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, object]:
    """The ownerReference every child carries: deleting the owner deletes the child."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
