"""Kubernetes Events on a run (``kubectl describe qft``), built as plain core/v1 bodies.

The operator posts them itself (``kube.post_event``) rather than through kopf's event
poster, which retries a refused post nine times and logs each refusal as an error: in a
namespace being deleted every new object is refused, and such a run's last Events are
expected to go nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from qwenft_operator.actions import EmitEvent

COMPONENT = "qwenft-operator"
# The API server's limit on an Event's message.
MAX_MESSAGE = 1024


def build_event(run: Mapping[str, Any], event: EmitEvent, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about ``run`` (its body as read from the API) at ``now`` (UTC)."""
    meta = run["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = event.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": run["apiVersion"],
            "kind": run["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
