"""Carries out reconciles: read the run, decide, act, record.

Handlers only say *which* run to look at (:meth:`Runner.trigger`); the runner reads the
run, builds :class:`~qwenft_operator.reconcile.Observed` from the operator's in-memory
indexes of Jobs, pods and Deployments (kept by kopf's watches, so a reconcile lists
nothing), asks :func:`~qwenft_operator.reconcile.decide`, and executes the actions through
:mod:`qwenft_operator.kube` in a thread pool. Triggers for a run that is being reconciled
are coalesced into one more pass, so a burst of child events costs one or two reconciles,
and two passes never race on the same run. A smoke test the decision asks for runs as a
background task (:mod:`qwenft_operator.smoke`); its outcome is held and wakes the run,
whose next decision records it. The Secrets, ConfigMaps and claims a decision checked
(:attr:`~qwenft_operator.actions.Decision.references`) are looked up when the watches'
indexes don't hold them (Secrets always: the operator may not watch them), and the
decision is made again if one is missing; a change of one wakes the runs that use it
(:meth:`Runner.reference_changed`), and a run that relies on a Secret is looked at again
every ``secret_recheck_seconds``. One more background task reads the training progress of
every run in Training on a fixed interval. These four jobs in one class are why the module is
over 400 lines; splitting it by job is planned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import aiohttp
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from qwenft_operator import gpu_fit, kube, progress, references, smoke
from qwenft_operator.actions import (
    CreateChild,
    Decision,
    DeleteChild,
    EmitEvent,
    PatchStatus,
    RunSmokeTest,
    SetJobSuspended,
    dump_status,
)
from qwenft_operator.builders import paths
from qwenft_operator.metrics import OperatorMetrics, RunKey
from qwenft_operator.observe import DeploymentFacts, JobFacts, PodFacts, parse_time
from qwenft_operator.phases import Phase
from qwenft_operator.reconcile import (
    Observed,
    decide,
    decide_invalid_spec,
    needs_gpu_memory,
    needs_queue_check,
)
from qwenft_operator.references import Found, Known, ObjectKey, RecentLookups, Reference
from qwenft_operator.rules import format_errors
from qwenft_operator.runs import Run
from qwenft_operator.settings import OperatorSettings
from qwenft_operator.status import QwenFineTuneStatus

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
API_RETRY_SECONDS = 5.0
WORKERS = 16
PROGRESS_READS_AT_ONCE = 32
# Seconds between looks at the Secrets a run's decision relied on (no watch covers them):
# a Secret deleted under a running child is reported within about this long.
SECRET_RECHECK_SECONDS = 60.0


def _version(body: Mapping[str, Any]) -> int:
    """metadata.resourceVersion as a number (etcd revisions only grow)."""
    value = str(body.get("metadata", {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0


def _store_values(store: Iterable[Any]) -> list[Any]:
    return list(store)


@dataclass
class Indexes:
    """kopf's indexes of the run's children, keyed by (namespace, run name)."""

    jobs: Mapping[RunKey, Iterable[JobFacts]] = field(default_factory=dict)
    pods: Mapping[RunKey, Iterable[PodFacts]] = field(default_factory=dict)
    deployments: Mapping[RunKey, Iterable[DeploymentFacts]] = field(default_factory=dict)
    # Every ConfigMap and claim in the watched namespaces, keyed by (namespace, name)
    # (None: being deleted).
    config_maps: Mapping[tuple[str, str], Iterable[Found | None]] = field(default_factory=dict)
    claims: Mapping[tuple[str, str], Iterable[Found | None]] = field(default_factory=dict)

    def found(self, namespace: str, key: ObjectKey) -> tuple[bool, Found | None]:
        """(whether the watch holds the ConfigMap or claim, how it last saw it)."""
        kind, name = key
        if kind == "secret":
            return False, None
        index = self.config_maps if kind == "configmap" else self.claims
        held = _store_values(index.get((namespace, name), ()))
        return (True, held[0]) if held else (False, None)

    def observe(self, run: Run) -> Observed:
        key = (run.namespace, run.name)
        names = run.names
        jobs = {j.name: j for j in _store_values(self.jobs.get(key, ()))}
        deployments = {d.name: d for d in _store_values(self.deployments.get(key, ()))}
        return Observed(
            validate_job=jobs.get(names.validate_job),
            train_job=jobs.get(names.train_job),
            merge_job=jobs.get(names.merge_job),
            deployment=deployments.get(names.serve_deployment),
            pods=tuple(_store_values(self.pods.get(key, ()))),
        )


class Runner:
    """Reconciles runs on request; one per operator process."""

    def __init__(
        self,
        clients: kube.Clients,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        *,
        workers: int = WORKERS,
        secret_recheck_seconds: float = SECRET_RECHECK_SECONDS,
    ) -> None:
        self.clients = clients
        self.settings = settings
        self.metrics = metrics
        self.indexes = Indexes()
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qwenft-api")
        self._busy: set[RunKey] = set()
        self._again: set[RunKey] = set()
        # The newest copy of each run seen (watch events and status patch answers), so a
        # reconcile woken by a child needs no read; parsed specs by (uid, generation).
        self._bodies: dict[RunKey, dict[str, Any]] = {}
        self._runs: dict[RunKey, tuple[tuple[str, int], Run]] = {}
        # What each child last looked like to the decision, so repeats wake nobody.
        self._signatures: dict[tuple[str, str, str], Hashable] = {}
        self._session: aiohttp.ClientSession | None = None
        # Smoke tests in flight (held so they are not garbage-collected) and finished ones.
        self._smoke_tasks: dict[RunKey, asyncio.Task[None]] = {}
        self._smoke_outcomes: dict[RunKey, smoke.SmokeOutcome] = {}
        self._progress_task: asyncio.Task[None] | None = None
        self.secret_recheck_seconds = secret_recheck_seconds
        self._secret_rechecks: dict[RunKey, asyncio.TimerHandle] = {}
        self._lookups = RecentLookups()
        # Which runs use which referenced objects ((namespace, kind, name)), so a change
        # of one wakes them, and the other way round, to forget a run's.
        self._users: dict[tuple[str, ObjectKey], set[RunKey]] = {}
        self._used: dict[RunKey, set[tuple[str, ObjectKey]]] = {}

    def start_progress_reader(self, interval: float) -> None:
        """Every ``interval`` seconds, read the progress of every run in Training."""
        self._progress_task = asyncio.get_running_loop().create_task(
            self._read_progress_forever(interval)
        )

    async def _read_progress_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.read_all_progress()
            except Exception:  # one bad round must not end progress reading for good
                log.exception("progress round failed; next one in %.0f s", interval)

    async def read_all_progress(self) -> None:
        """One round of progress reads: the runs whose newest copy is in phase Training,
        at most PROGRESS_READS_AT_ONCE at a time; a failed read waits for the next round."""
        gate = asyncio.Semaphore(PROGRESS_READS_AT_ONCE)
        training = [
            (key, body)
            for key, body in list(self._bodies.items())
            if (body.get("status") or {}).get("phase") == Phase.TRAINING
        ]

        async def read(key: RunKey, body: Mapping[str, Any]) -> None:
            async with gate:
                try:
                    await self.read_progress(key, body)
                except (ApiException, OSError) as err:
                    log.warning("progress of %s/%s not recorded: %s", key[0], key[1], err)

        await asyncio.gather(*(read(key, body) for key, body in training))

    async def close(self) -> None:
        if self._progress_task is not None:
            self._progress_task.cancel()
        for task in self._smoke_tasks.values():
            task.cancel()
        for handle in self._secret_rechecks.values():
            handle.cancel()
        if self._session is not None:
            await self._session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.clients.close()

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def trigger(self, key: RunKey, body: Mapping[str, Any] | None = None) -> Decision | None:
        """Reconcile ``key`` now, or once more after the pass that is running.

        ``body`` is the run as a watch event just delivered it (saves reading it again);
        further passes read it fresh.
        """
        if key in self._busy:
            self._again.add(key)
            return None
        self._busy.add(key)
        try:
            decision = None
            while True:
                self._again.discard(key)
                decision = await self._reconcile(key, body)
                body = None
                if key not in self._again:
                    return decision
        finally:
            self._busy.discard(key)

    def remember(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """Keep ``body`` if it is newer than the copy held."""
        held = self._bodies.get(key)
        if held is None or _version(body) >= _version(held):
            self._bodies[key] = dict(body)

    def forget(self, key: RunKey) -> None:
        """The run is gone (or going): drop what is held about it."""
        self._bodies.pop(key, None)
        self._runs.pop(key, None)
        self._smoke_outcomes.pop(key, None)
        self._track_references(key, ())
        self._recheck_secrets(key, due=False)
        task = self._smoke_tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.metrics.forget(key)

    async def run_changed(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """A watch event of the run itself: created, found at start-up, or changed.

        The echo of the operator's own status patch (a copy already held) wakes nothing.
        """
        held = self._bodies.get(key)
        if held is not None and _version(body) <= _version(held):
            return
        try:
            await self.trigger(key, body)
        except (ApiException, OSError) as err:  # retried by _reconcile's requeue
            log.warning("reconcile of %s/%s failed: %s", key[0], key[1], err)

    async def child_changed(
        self, key: RunKey, child: tuple[str, str], signature: Hashable, *, deleted: bool
    ) -> None:
        """Reconcile the owner when a child changed in a way the decision can see.

        A signature of None means "nothing to report": it is not held, so a child that
        only ever had None wakes nobody.
        """
        slot = (key[0], *child)
        if deleted:
            self._signatures.pop(slot, None)
            self._bodies.pop(key, None)  # read the run afresh: it may be gone too
        elif self._signatures.get(slot) == signature:
            return
        elif signature is None:
            del self._signatures[slot]
        else:
            self._signatures[slot] = signature
        await self.trigger(key)

    def _run_of(self, key: RunKey, body: Mapping[str, Any]) -> Run:
        meta = body["metadata"]
        version = (str(meta.get("uid") or ""), int(meta.get("generation") or 1))
        held = self._runs.get(key)
        if held is not None and held[0] == version:
            return held[1]
        run = Run.from_body(body, self.settings)
        self._runs[key] = (version, run)
        return run

    def _later(self, key: RunKey, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, lambda: loop.create_task(self._quiet_trigger(key)))

    async def _quiet_trigger(self, key: RunKey) -> None:
        try:
            await self.trigger(key)
        except (ApiException, OSError) as err:
            log.warning("reconcile of %s/%s failed: %s", key[0], key[1], err)

    async def _reconcile(
        self, key: RunKey, body: Mapping[str, Any] | None = None
    ) -> Decision | None:
        started = time.monotonic()
        try:
            return await self._reconcile_once(key, body)
        except ApiException as err:
            if kube.namespace_terminating(err):
                log.debug("%s/%s: namespace is being deleted; leaving the run alone", *key)
                return None
            if err.status == 404 and await self._call(kube.get_run, self.clients, *key) is None:
                # deleted between its read and its status patch (or with its namespace)
                log.debug("%s/%s: deleted while being reconciled", *key)
                self.forget(key)
                return None
            self._count_and_retry(key, err)
            raise
        except OSError as err:
            self._count_and_retry(key, err)
            raise
        finally:
            self.metrics.reconcile_duration.observe(time.monotonic() - started)

    def _count_and_retry(self, key: RunKey, err: ApiException | OSError) -> None:
        reason = f"api{err.status}" if isinstance(err, ApiException) else "connection"
        self.metrics.reconcile_errors.labels(reason=reason).inc()
        self._later(key, API_RETRY_SECONDS)

    async def _reconcile_once(
        self, key: RunKey, given: Mapping[str, Any] | None
    ) -> Decision | None:
        namespace, name = key
        if given is not None:
            self.remember(key, given)
        body = self._bodies.get(key)
        if body is None:
            body = await self._call(kube.get_run, self.clients, namespace, name)
            if body is not None:
                self.remember(key, body)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return None
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            status = QwenFineTuneStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = QwenFineTuneStatus()
        try:
            run = self._run_of(key, body)
        except ValidationError as err:
            message = "; ".join(format_errors(err, prefix="spec"))
            generation = int(body["metadata"].get("generation") or 1)
            decision = decide_invalid_spec(generation, status, message, now)
        else:
            observed = self.indexes.observe(run)
            observed = replace(observed, smoke=self._smoke_outcomes.get(key))
            if needs_queue_check(run, observed):
                job = run.names.train_job
                wait = await self._call(kube.queue_wait, self.clients, namespace, job)
                observed = replace(observed, queue_wait=wait)
            if needs_gpu_memory(run, observed):
                selector = run.spec.scheduling.node_selector
                nodes = await self._call(kube.node_labels, self.clients, selector)
                memory = gpu_fit.gpu_memory_of_nodes(nodes) if nodes is not None else None
                observed = replace(observed, gpu_memory=memory)
            decision = decide(run, status, observed, now)
            if decision.references:
                # The decision took what it did not know as present; if a lookup finds
                # otherwise, decide again knowing it.
                known = await self._look_up(namespace, decision.references)
                if references.missing(decision.references, known):
                    decision = decide(run, status, replace(observed, references=known), now)
            self._track_references(key, decision.references)
            self._recheck_secrets(key, due=any(r.kind == "secret" for r in decision.references))
        patched = await self._call(self._execute, namespace, name, decision)
        if patched is not None:
            self.remember(key, patched)
        for test in decision.of_type(RunSmokeTest):
            assert isinstance(test, RunSmokeTest)
            self._start_smoke_test(key, test)
        for action in decision.of_type(EmitEvent):
            assert isinstance(action, EmitEvent)
            await self._call(kube.post_event, self.clients, body, action)
        self.metrics.observe_restarts(status, decision.status)
        created = parse_time(body["metadata"].get("creationTimestamp"))
        self.metrics.observe_phase(
            key, status.phase, decision.status.phase, created=created, now=now
        )
        if decision.requeue_after is not None:
            self._later(key, decision.requeue_after)
        return decision

    async def _look_up(self, namespace: str, refs: Iterable[Reference]) -> Known:
        """What exists of ``refs``: from the watches' indexes, recent lookups, or the API
        (one call per object not known; an object the index lacks is looked up too, in
        case the watch has not shown it yet)."""
        known: dict[ObjectKey, Found | None] = {}
        unknown: list[ObjectKey] = []
        for key in dict.fromkeys(ref.object for ref in refs):
            held, watched = self.indexes.found(namespace, key)
            fresh, answer = self._lookups.get(namespace, key)
            if held:
                known[key] = watched
            elif fresh:
                known[key] = answer
            else:
                unknown.append(key)
        if unknown:
            answers = await self._call(self._look_up_all, namespace, unknown)
            for key, answer in zip(unknown, answers, strict=True):
                self._lookups.record(namespace, key, answer)
                known[key] = answer
        return known

    def _look_up_all(self, namespace: str, keys: list[ObjectKey]) -> list[Found | None]:
        return [kube.look_up_reference(self.clients, namespace, key) for key in keys]

    def _track_references(self, key: RunKey, refs: Iterable[Reference]) -> None:
        now = {(key[0], ref.object) for ref in refs}
        before = self._used.pop(key, set())
        for gone in before - now:
            users = self._users.get(gone)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[gone]
        for added in now - before:
            self._users.setdefault(added, set()).add(key)
        if now:
            self._used[key] = now

    def _recheck_secrets(self, key: RunKey, *, due: bool) -> None:
        """Reconcile ``key`` again in ``secret_recheck_seconds`` (one pending look per run),
        or drop the pending look when ``due`` is False."""
        pending = self._secret_rechecks.pop(key, None)
        if pending is not None:
            pending.cancel()
        if due:
            loop = asyncio.get_running_loop()
            self._secret_rechecks[key] = loop.call_later(
                self.secret_recheck_seconds, lambda: loop.create_task(self._quiet_trigger(key))
            )

    async def reference_changed(self, namespace: str, key: ObjectKey, *, deleted: bool) -> None:
        """A ConfigMap or claim appeared, changed or went: reconcile the runs that use it.

        After a deletion the runs are read afresh: they may be going too (a namespace
        being deleted takes its ConfigMaps, claims and runs together).
        """
        self._lookups.forget(namespace, key)
        users = sorted(self._users.get((namespace, key), ()))
        if deleted:
            for run in users:
                self._bodies.pop(run, None)
        await asyncio.gather(*(self._quiet_trigger(run) for run in users))

    def _start_smoke_test(self, key: RunKey, test: RunSmokeTest) -> None:
        """Run the smoke test in the background unless it runs or ran for this generation."""
        held = self._smoke_outcomes.get(key)
        if key in self._smoke_tasks or (held is not None and held.generation == test.generation):
            return

        async def run() -> None:
            try:
                outcome = await smoke.run_smoke_test(
                    test.url, test.model, test.prompts, generation=test.generation
                )
            finally:
                self._smoke_tasks.pop(key, None)
            self._smoke_outcomes[key] = outcome
            await self._quiet_trigger(key)

        self._smoke_tasks[key] = asyncio.get_running_loop().create_task(run())

    def _execute(self, namespace: str, name: str, decision: Decision) -> dict[str, Any] | None:
        """The API side of a decision, in order (runs in the thread pool); returns the run
        as the status patch left it, if there was one."""
        patched = None
        for action in decision.actions:
            match action:
                case CreateChild(kind=kind, body=child):
                    _, made = kube.ensure_child(self.clients, kind, namespace, child)
                    log.info("%s %s %s/%s", "created" if made else "found", kind, namespace,
                             action.name)  # fmt: skip
                case DeleteChild(kind=kind, name=child_name):
                    kube.delete_child(self.clients, kind, namespace, child_name)
                case SetJobSuspended(name=job, suspend=suspend):
                    kube.set_job_suspended(self.clients, namespace, job, suspend)
                case PatchStatus(patch=patch):
                    patched = kube.patch_status(self.clients, namespace, name, patch)
        return patched

    async def read_progress(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """Scrape the rank-0 trainer of a training run into its status.

        ``status.progress``, ``status.resumedFromStep`` and ``status.checkpoints`` (the
        complete checkpoints on disk) follow the trainer.
        """
        pod = progress.rank_zero(_store_values(self.indexes.pods.get(key, ())))
        if pod is None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        found = await progress.fetch_progress(self._session, progress.metrics_url(pod), run=key[1])
        if found is None:
            return
        current = QwenFineTuneStatus.model_validate(dict(body.get("status") or {}))
        update: dict[str, Any] = {"progress": found.progress}
        if found.resumed_from_step is not None:
            update["resumed_from_step"] = found.resumed_from_step
        if found.checkpoints is not None or found.last_checkpoint_step is not None:
            try:
                run = self._run_of(key, body)
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
        before, after = dump_status(current), dump_status(current.model_copy(update=update))
        patch = {
            k: after.get(k)
            for k in ("progress", "resumedFromStep", "checkpoints")
            if before.get(k) != after.get(k)
        }
        if patch:
            patched = await self._call(kube.patch_status, self.clients, key[0], key[1], patch)
            self.remember(key, patched)
        self.metrics.mirror_progress(key, found.progress)
