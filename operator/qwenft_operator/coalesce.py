"""At most one reconcile pass per object at a time; triggers during a pass make one more.

A burst of watch events for one object (a run's children changing, a server's runs
finishing) costs one or two passes, and two passes never race on the same object.

    passes = Coalescer[RunKey]()
    decision = await passes.run(key, lambda first: reconcile(key, body if first else None))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class Coalescer(Generic[K]):
    """Keys with a pass running, and those asked for again meanwhile."""

    def __init__(self) -> None:
        self._busy: set[K] = set()
        self._again: set[K] = set()

    async def run(self, key: K, one_pass: Callable[[bool], Awaitable[R]]) -> R | None:
        """Pass over ``key`` until no trigger came during the last pass; its result.

        ``one_pass(first)`` is told whether it is the first pass of this call. When a pass
        over ``key`` is already running, it is asked to run once more and None is returned
        at once. An exception from a pass ends the passes and propagates.
        """
        if key in self._busy:
            self._again.add(key)
            return None
        self._busy.add(key)
        try:
            first = True
            while True:
                self._again.discard(key)
                result = await one_pass(first)
                first = False
                if key not in self._again:
                    return result
        finally:
            self._busy.discard(key)
