"""The labels of the nodes a run targets, listed once per node selector for every run that
asks within a few seconds.

The GPU-fit check reads the GPU memory that GPU Feature Discovery labels nodes with. Many
runs finish validation together (a sweep, a burst of manifests) and most share a node
selector, so each selector's nodes are listed once and the answer serves every run that
asks while it is fresh; runs asking while the list is in flight wait for that one list.
Node labels change when nodes join or leave, far more slowly than this cache's lifetime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

NodeSelectorKey = tuple[tuple[str, str], ...]
Labels = list[dict[str, str]]

# How long a listing is taken as still true.
NODE_LABELS_TTL_SECONDS = 10.0


class RecentNodeLabels:
    """Node labels per node selector, listed through ``list_labels`` at most once per ``ttl``.

    ``list_labels`` answers None when the operator may not list nodes; that answer is held
    like any other. An error is not held: every run waiting on that listing gets it, and
    the next ask lists again.
    """

    def __init__(
        self,
        list_labels: Callable[[Mapping[str, str]], Awaitable[Labels | None]],
        ttl: float = NODE_LABELS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = list_labels
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[NodeSelectorKey, tuple[float, Labels | None]] = {}
        self._listing: dict[NodeSelectorKey, asyncio.Future[Labels | None]] = {}

    async def of(self, selector: Mapping[str, str]) -> Labels | None:
        """The labels of the nodes ``selector`` matches (every node when it is empty)."""
        key: NodeSelectorKey = tuple(sorted(selector.items()))
        held = self._seen.get(key)
        if held is not None and self.clock() - held[0] < self.ttl:
            return held[1]
        listing = self._listing.get(key)
        if listing is None:
            listing = asyncio.ensure_future(self._list_and_record(key, selector))
            self._listing[key] = listing
        return await asyncio.shield(listing)

    async def _list_and_record(
        self, key: NodeSelectorKey, selector: Mapping[str, str]
    ) -> Labels | None:
        try:
            answer = await self._list(selector)
            self._seen[key] = (self.clock(), answer)
            return answer
        finally:
            del self._listing[key]
