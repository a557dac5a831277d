"""The timer that copies each training run's progress from its trainer into its status.

Every ``interval`` seconds, the runs whose newest copy is in phase Training are scraped
(:func:`~qwenft_operator.progress.fetch_progress` on their rank-0 pod, at most
``PROGRESS_READS_AT_ONCE`` at a time). ``status.progress``, ``status.resumedFromStep`` and
``status.checkpoints`` follow the trainer through one status patch per run, made of the keys
that changed (:func:`~qwenft_operator.actions.status_patch`), and the operator's per-run
gauges mirror the progress. A failed read waits for the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from qwenft_operator import progress
from qwenft_operator.actions import status_patch
from qwenft_operator.builders import paths
from qwenft_operator.metrics import OperatorMetrics, RunKey
from qwenft_operator.observe import PodFacts
from qwenft_operator.phases import Phase
from qwenft_operator.run_cache import RunCache
from qwenft_operator.status import QwenFineTuneStatus

log = logging.getLogger(__name__)
PROGRESS_READS_AT_ONCE = 32
# Patch the run's status with these keys; returns the run as the patch left it.
StatusPatcher = Callable[[RunKey, dict[str, Any]], Awaitable[dict[str, Any]]]


class ProgressReader:
    """Scrapes training runs' trainers on a timer and records what they say."""

    def __init__(
        self,
        runs: RunCache,
        pods: Callable[[RunKey], Iterable[PodFacts]],
        patch_status: StatusPatcher,
        metrics: OperatorMetrics,
    ) -> None:
        self.runs = runs
        self.pods = pods
        self.patch_status = patch_status
        self.metrics = metrics
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        """Every ``interval`` seconds, read the progress of every run in Training."""
        self._task = asyncio.get_running_loop().create_task(self._forever(interval))

    async def _forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.read_all()
            except Exception:  # one bad round must not end progress reading for good
                log.exception("progress round failed; next one in %.0f s", interval)

    async def read_all(self) -> None:
        """One round: the runs in phase Training, at most PROGRESS_READS_AT_ONCE at a time."""
        gate = asyncio.Semaphore(PROGRESS_READS_AT_ONCE)

        async def read(key: RunKey, body: Mapping[str, Any]) -> None:
            async with gate:
                try:
                    await self.read(key, body)
                except (ApiException, OSError) as err:
                    log.warning("progress of %s/%s not recorded: %s", key[0], key[1], err)

        await asyncio.gather(*(read(key, body) for key, body in self.runs.in_phase(Phase.TRAINING)))

    async def read(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """Scrape the rank-0 trainer of one training run into its status."""
        pod = progress.rank_zero(list(self.pods(key)))
        if pod is None:
            return
        if self._http is None:
            self._http = httpx.AsyncClient()
        found = await progress.fetch_progress(self._http, progress.metrics_url(pod), run=key[1])
        if found is None:
            return
        current = QwenFineTuneStatus.model_validate(dict(body.get("status") or {}))
        update: dict[str, Any] = {"progress": found.progress}
        if found.resumed_from_step is not None:
            update["resumed_from_step"] = found.resumed_from_step
        if found.checkpoints is not None or found.last_checkpoint_step is not None:
            try:
                run = self.runs.run_of(key, body)
            except ValidationError:  # the next reconcile reports the spec
                run = None
            if run is not None:
                update["checkpoints"] = progress.build_checkpoints(
                    current.checkpoints,
                    found,
                    paths.output_dir(run),
                    datetime.now(UTC),
                    keep=run.spec.checkpoint.keep,
                )
        patch = status_patch(current, current.model_copy(update=update))
        if patch:
            self.runs.remember(key, await self.patch_status(key, patch))
        self.metrics.mirror_progress(key, found.progress)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._http is not None:
            await self._http.aclose()
