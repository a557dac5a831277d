"""Carries out reconciles: read the run, decide, act, record.

Handlers only say *which* run to look at (:meth:`Runner.trigger`); the runner takes the
run's newest copy (:class:`~qwenft_operator.run_cache.RunCache`), builds
:class:`~qwenft_operator.reconcile.Observed` from the operator's in-memory indexes of Jobs,
pods and Deployments (kept by kopf's watches, so a reconcile lists nothing), asks
:func:`~qwenft_operator.reconcile.decide`, and executes the actions through
:mod:`qwenft_operator.kube` in a thread pool. Triggers for a run that is being reconciled
are coalesced into one more pass, so a burst of child events costs one or two reconciles,
and two passes never race on the same run; a pass that fails on an API error is tried again
after a growing wait (:mod:`qwenft_operator.backoff`). The Secrets, ConfigMaps and claims a
decision checked are looked up when the watches' indexes don't hold them (Secrets always:
the operator may not watch them), and the decision is made again if one is missing; a change
of one wakes the runs that use it (:class:`~qwenft_operator.reference_users.ReferenceUsers`),
and a run that relies on a Secret is looked at again every ``secret_recheck_seconds``.
Smoke tests run in :class:`~qwenft_operator.smoke_tasks.SmokeTests`, progress reads in
:class:`~qwenft_operator.progress_reader.ProgressReader`. The module is over 300 lines because
one reconcile pass (read, decide, look up, decide again, act, record, retry) is read best in
one place; the jobs around it live in the modules named here.
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

from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from qwenft_trainer.rules import format_errors

from qwenft_operator import gpu_fit, kube, references
from qwenft_operator.actions import (
    CreateChild,
    Decision,
    DeleteChild,
    EmitEvent,
    PatchStatus,
    ReplaceChild,
    RunSmokeTest,
    SetJobSuspended,
)
from qwenft_operator.backoff import RetryBackoff
from qwenft_operator.coalesce import Coalescer
from qwenft_operator.metrics import OperatorMetrics, RunKey
from qwenft_operator.node_labels import RecentNodeLabels
from qwenft_operator.observe import DeploymentFacts, JobFacts, PodFacts, parse_time
from qwenft_operator.parsed_run import Run
from qwenft_operator.progress_reader import ProgressReader
from qwenft_operator.reconcile import (
    Observed,
    decide,
    decide_invalid_spec,
    needs_gpu_memory,
    needs_queue_check,
)
from qwenft_operator.reference_users import ReferenceUsers
from qwenft_operator.references import Found, Known, ObjectKey, RecentLookups, Reference
from qwenft_operator.run_cache import RunCache
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.smoke_tasks import SmokeTests
from qwenft_operator.status import QwenFineTuneStatus

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
WORKERS = 16
# Seconds between looks at the Secrets a run's decision relied on (no watch covers them):
# a Secret deleted under a running child is reported within about this long.
SECRET_RECHECK_SECONDS = 60.0


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
        settings: OperatorConfig,
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
        self.runs = RunCache(settings)
        self.smoke_tests = SmokeTests(on_done=self._quiet_trigger)
        self.progress = ProgressReader(
            self.runs,
            pods=lambda key: _store_values(self.indexes.pods.get(key, ())),
            patch_status=self._patch_status,
            metrics=metrics,
        )
        self.references = ReferenceUsers()
        self._passes = Coalescer[RunKey]()
        # What each child last looked like to the decision, so repeats wake nobody.
        self._signatures: dict[tuple[str, str, str], Hashable] = {}
        self.secret_recheck_seconds = secret_recheck_seconds
        self._secret_rechecks: dict[RunKey, asyncio.TimerHandle] = {}
        # Recent answers about referenced objects, so runs of one namespace share a lookup.
        self.lookups = RecentLookups()
        self.nodes = RecentNodeLabels(lambda sel: self._call(kube.node_labels, self.clients, sel))
        # API errors in a row per run: the next try waits longer (backoff.py).
        self._backoff = RetryBackoff()

    async def close(self) -> None:
        await self.progress.close()
        self.smoke_tests.close()
        for handle in self._secret_rechecks.values():
            handle.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.clients.close()

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def _patch_status(self, key: RunKey, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call(kube.patch_status, self.clients, key[0], key[1], patch)

    async def trigger(self, key: RunKey, body: Mapping[str, Any] | None = None) -> Decision | None:
        """Reconcile ``key`` now, or once more after the pass that is running.

        ``body`` is the run as a watch event just delivered it (saves reading it again);
        further passes read it fresh.
        """
        return await self._passes.run(
            key, lambda first: self._reconcile(key, body if first else None)
        )

    def forget(self, key: RunKey) -> None:
        """The run is gone (or going): drop what is held about it."""
        self.runs.forget(key)
        self.smoke_tests.forget(key)
        self._backoff.succeeded(key)
        self.metrics.runs_retrying.set(self._backoff.waiting)
        self.references.forget(key)
        self._recheck_secrets(key, due=False)
        self.metrics.forget(key)

    async def run_changed(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """A watch event of the run itself: created, found at start-up, or changed.

        The echo of the operator's own status patch (a copy already held) wakes nothing.
        """
        if self.runs.seen(key, body):
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
            self.runs.drop_body(key)  # read the run afresh: it may be gone too
        elif self._signatures.get(slot) == signature:
            return
        elif signature is None:
            del self._signatures[slot]
        else:
            self._signatures[slot] = signature
        await self.trigger(key)

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
            decision = await self._reconcile_once(key, body)
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
        self._backoff.succeeded(key)
        self.metrics.runs_retrying.set(self._backoff.waiting)
        return decision

    def _count_and_retry(self, key: RunKey, err: ApiException | OSError) -> None:
        reason = f"api{err.status}" if isinstance(err, ApiException) else "connection"
        self.metrics.reconcile_errors.labels(reason=reason).inc()
        delay = self._backoff.failed(key)
        self.metrics.runs_retrying.set(self._backoff.waiting)
        log.info("%s/%s: reconcile tried again in %.0f s", key[0], key[1], delay)
        self._later(key, delay)

    async def _reconcile_once(
        self, key: RunKey, given: Mapping[str, Any] | None
    ) -> Decision | None:
        namespace, name = key
        if given is not None:
            self.runs.remember(key, given)
        body = self.runs.body(key)
        if body is None:
            body = await self._call(kube.get_run, self.clients, namespace, name)
            if body is not None:
                self.runs.remember(key, body)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return None
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            status = QwenFineTuneStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = QwenFineTuneStatus()
        try:
            run = self.runs.run_of(key, body)
        except ValidationError as err:
            message = "; ".join(format_errors(err, prefix="spec"))
            generation = int(body["metadata"].get("generation") or 1)
            decision = decide_invalid_spec(generation, status, message, now)
        else:
            observed = self.indexes.observe(run)
            observed = replace(observed, smoke=self.smoke_tests.outcome(key))
            if needs_queue_check(run, observed):
                job = run.names.train_job
                wait = await self._call(kube.queue_wait, self.clients, namespace, job)
                observed = replace(observed, queue_wait=wait)
            if needs_gpu_memory(run, observed):
                selector = run.spec.scheduling.node_selector
                nodes = await self.nodes.of(selector)
                memory = gpu_fit.gpu_memory_of_nodes(nodes) if nodes is not None else None
                observed = replace(observed, gpu_memory=memory)
            decision = decide(run, status, observed, now)
            if decision.references:
                # The decision took what it did not know as present; if a lookup finds
                # otherwise, decide again knowing it.
                known = await self._look_up(namespace, decision.references)
                if references.missing(decision.references, known):
                    decision = decide(run, status, replace(observed, references=known), now)
            self.references.track(key, decision.references)
            self._recheck_secrets(key, due=any(r.kind == "secret" for r in decision.references))
        patched = await self._call(self._execute, namespace, name, decision)
        if patched is not None:
            self.runs.remember(key, patched)
        for test in decision.of_type(RunSmokeTest):
            assert isinstance(test, RunSmokeTest)
            self.smoke_tests.start(key, test)
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
            fresh, answer = self.lookups.get(namespace, key)
            if held:
                known[key] = watched
            elif fresh:
                known[key] = answer
            else:
                unknown.append(key)
        if unknown:
            answers = await self._call(self._look_up_all, namespace, unknown)
            for key, answer in zip(unknown, answers, strict=True):
                self.lookups.record(namespace, key, answer)
                known[key] = answer
        return known

    def _look_up_all(self, namespace: str, keys: list[ObjectKey]) -> list[Found | None]:
        return [kube.look_up_reference(self.clients, namespace, key) for key in keys]

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
        self.lookups.forget(namespace, key)
        users = self.references.users_of(namespace, key)
        if deleted:
            for run in users:
                self.runs.drop_body(run)
        await asyncio.gather(*(self._quiet_trigger(run) for run in users))

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
                case ReplaceChild(kind=kind, body=child):
                    kube.replace_child(self.clients, kind, namespace, child, None)
                    log.info("replaced %s %s/%s", kind, namespace, action.name)
                case DeleteChild(kind=kind, name=child_name):
                    kube.delete_child(self.clients, kind, namespace, child_name)
                case SetJobSuspended(name=job, suspend=suspend):
                    kube.set_job_suspended(self.clients, namespace, job, suspend)
                case PatchStatus(patch=patch):
                    patched = kube.patch_status(self.clients, namespace, name, patch)
        return patched
