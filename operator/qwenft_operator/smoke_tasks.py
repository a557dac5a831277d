"""Smoke tests of Ready runs, run in the background, and what they found.

A decision asks for a smoke test (:class:`~qwenft_operator.actions.RunSmokeTest`); the test
runs as an asyncio task (:mod:`qwenft_operator.smoke`) so the reconcile that asked isn't held
up by a model answering prompts. Its outcome is kept per run and ``on_done`` wakes the run,
whose next decision records it. One test per run at a time, and one per generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from qwenft_operator import smoke
from qwenft_operator.actions import RunSmokeTest
from qwenft_operator.metrics import RunKey
from qwenft_operator.status import SmokeOutcome


class SmokeTests:
    """Smoke tests in flight (held so they are not garbage-collected) and finished ones."""

    def __init__(self, on_done: Callable[[RunKey], Awaitable[None]]) -> None:
        self._on_done = on_done
        self._tasks: dict[RunKey, asyncio.Task[None]] = {}
        self._outcomes: dict[RunKey, SmokeOutcome] = {}

    def outcome(self, key: RunKey) -> SmokeOutcome | None:
        return self._outcomes.get(key)

    def start(self, key: RunKey, test: RunSmokeTest) -> None:
        """Run ``test`` in the background unless it runs or ran for this generation."""
        held = self._outcomes.get(key)
        if key in self._tasks or (held is not None and held.generation == test.generation):
            return

        async def run() -> None:
            try:
                outcome = await smoke.run_smoke_test(
                    test.url, test.model, test.prompts, generation=test.generation
                )
            finally:
                self._tasks.pop(key, None)
            self._outcomes[key] = outcome
            await self._on_done(key)

        self._tasks[key] = asyncio.get_running_loop().create_task(run())

    def forget(self, key: RunKey) -> None:
        self._outcomes.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
