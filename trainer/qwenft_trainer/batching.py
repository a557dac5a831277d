"""Dynamic batching of non-streaming completions.

Generating for eight prompts in one ``generate`` call costs little more than for one (the
weights are read once per step for all rows), while eight threads calling ``generate``
separately contend for the GIL and the device. Requests wait in a queue; whenever one of
the ``max_concurrency`` generation slots frees up, the oldest request and up to
``max_batch_size - 1`` queued requests it can share a call with (same adapter and sampling
settings) run together. Nothing waits for a batch to fill: under light load each request
runs alone at once; under heavy load the queue fills while slots are busy and batches grow.
Seeded sampling never shares a call, so its random draws stay reproducible.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

from qwenft_trainer.generation import Completion, Engine, SamplingParams


@dataclass
class _Pending:
    name: str
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future[Completion]

    def key(self) -> tuple[object, ...] | None:
        p = self.params
        if p.sampling and p.seed is not None:
            return None
        return (self.name, p.temperature, p.top_p, p.stop, p.ignore_eos)


class Batcher:
    """Queues completions and runs them in batches on ``executor``."""

    def __init__(self, executor: Executor, slots: asyncio.Semaphore, max_batch_size: int) -> None:
        self._executor = executor
        self._slots = slots
        self._max_batch_size = max_batch_size
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(
        self, engine: Engine, name: str, prompt: list[int], params: SamplingParams
    ) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(name, prompt, params, future))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._dispatch(engine))
        return await future

    def _take_batch(self) -> list[_Pending]:
        head = self._queue.popleft()
        batch = [head]
        key = head.key()
        if key is not None:
            for pending in list(self._queue):
                if len(batch) >= self._max_batch_size:
                    break
                if pending.key() == key:
                    batch.append(pending)
                    self._queue.remove(pending)
        return [p for p in batch if not p.future.done()]  # drop abandoned requests

    async def _dispatch(self, engine: Engine) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            batch = self._take_batch() if self._queue else []
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(engine, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, engine: Engine, batch: list[_Pending]) -> None:
        job = partial(
            engine.generate_batch,
            batch[0].name,
            [p.prompt for p in batch],
            [p.params for p in batch],
        )
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, job)
        except Exception as err:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
        else:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            self._slots.release()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
