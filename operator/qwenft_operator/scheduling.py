"""Why a step's pods wait for a node: the scheduler's verdict, as one line for a condition.

A Job whose pods no node fits looks healthy on its own (active, nothing failed): its pods
stay Pending, and only their ``PodScheduled`` condition says why (``Insufficient
nvidia.com/gpu``, a node selector no node matches, an untolerated taint).
:func:`find_unschedulable` turns the pods of one step into that reason, naming a partly
scheduled gang as such ("1 of 3 training pods scheduled; 2 unschedulable: ..."), and the
moment the wait began, from which ``runPolicy.schedulingTimeoutSeconds`` counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from qwenft_operator.observe import PodFacts, Unschedulable

# Pods that hold or wait for a node; finished ones (retried away) don't count.
_LIVE_PHASES = ("Pending", "Running")


@dataclass(frozen=True)
class Waiting:
    """Pods of one step that the scheduler can't place."""

    message: str  # for the step's condition and the Warning Event
    since: datetime  # when the longest-waiting of them was first found unschedulable

    def deadline(self, timeout_seconds: int) -> datetime:
        """When the wait has lasted ``timeout_seconds``."""
        return self.since + timedelta(seconds=timeout_seconds)


def _order(pod: PodFacts) -> tuple[int, str]:
    index = pod.completion_index
    return (index if index is not None else 1 << 30, pod.name)


def find_unschedulable(
    pods: Iterable[PodFacts], *, wanted: int, noun: str, now: datetime
) -> Waiting | None:
    """The unschedulable pods among ``pods`` (one step's, ``wanted`` of them), or None.

    The message is the scheduler's, from the lowest-ranked unschedulable pod; a gang is
    counted ("2 of 3 ... scheduled"), since the scheduled ranks hold their GPUs while they
    wait for the others. ``now`` stands in for a pod that has no time recorded.
    """
    live = sorted((p for p in pods if p.phase in _LIVE_PHASES), key=_order)
    stuck: list[Unschedulable] = [p.unschedulable for p in live if p.unschedulable is not None]
    if not stuck:
        return None
    verdict = stuck[0].message or "no node fits the pod"
    if wanted == 1 and len(live) == 1:
        message = f"{noun} pod unschedulable: {verdict}"
    else:
        scheduled = sum(1 for p in live if p.node_name)
        message = (
            f"{scheduled} of {wanted} {noun} pods scheduled; {len(stuck)} unschedulable: {verdict}"
        )
    since = min(u.since or now for u in stuck)
    return Waiting(message=message, since=since)
