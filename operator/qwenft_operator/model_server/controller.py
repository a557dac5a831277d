"""Carries out server reconciles: read the server, decide, act, record.

The API side of :func:`~qwenft_operator.model_server.decide.decide_server`. A server is
reconciled when it changes, when its Deployment changes, and when any ``QwenFineTune`` of
its namespace changes (a run finishing, being labelled, attaching itself or being deleted
may change the adapter set; servers are few, so every server of the namespace is looked
at). The runs come from the operator's index of ``QwenFineTune`` objects
(:mod:`.fine_tune_index`), so a reconcile reads only the server's Deployment. Triggers for
a server being reconciled are coalesced into one more pass, as for runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from kubernetes.client.rest import ApiException
from pydantic import ValidationError
from qwenft_trainer.rules import format_errors

from qwenft_operator import conditions as cond
from qwenft_operator import kube
from qwenft_operator.actions import EmitEvent
from qwenft_operator.backoff import RetryBackoff
from qwenft_operator.coalesce import Coalescer
from qwenft_operator.model_server.adapters import FineTuneFacts
from qwenft_operator.model_server.builders import Server
from qwenft_operator.model_server.decide import READY, ServerDecision, decide_server
from qwenft_operator.model_server.fine_tune_index import FineTuneRecord
from qwenft_operator.model_server.spec import KIND
from qwenft_operator.model_server.status import QwenModelServerStatus, ServerPhase
from qwenft_operator.parsed_run import Run
from qwenft_operator.references import missing
from qwenft_operator.settings import OperatorConfig

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
ServerKey = tuple[str, str]


def _version(body: Mapping[str, Any]) -> int:
    """metadata.resourceVersion as a number (etcd revisions only grow)."""
    value = str(body.get("metadata", {}).get("resourceVersion") or "0")
    return int(value) if value.isdigit() else 0


def dump(status: QwenModelServerStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServerController:
    """Reconciles ``QwenModelServer`` objects on request; one per operator process."""

    def __init__(
        self,
        clients: kube.Clients,
        settings: OperatorConfig,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.clients = clients
        self.settings = settings
        self.executor = executor
        self.fine_tunes: Mapping[str, Iterable[FineTuneRecord]] = {}
        # Parsed runs by (namespace, name), with the (uid, generation) parsed: a spec is
        # validated once per generation.
        self._parsed: dict[tuple[str, str], tuple[tuple[str, int], Run | None, str]] = {}
        self._servers: dict[ServerKey, dict[str, Any]] = {}
        self._passes = Coalescer[ServerKey]()
        self._backoff = RetryBackoff()
        # What servers last read of each run, so a status patch that changes none of it
        # (training progress) wakes no server.
        self._fine_tunes_seen: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        self._tasks: set[asyncio.Task[ServerDecision | None]] = set()

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def servers_in(self, namespace: str) -> list[ServerKey]:
        return sorted(key for key in self._servers if key[0] == namespace)

    async def server_changed(self, key: ServerKey, body: Mapping[str, Any]) -> None:
        """A watch event of the server; the echo of its own status patch wakes nothing."""
        held = self._servers.get(key)
        if held is not None and _version(body) <= _version(held):
            return
        self._servers[key] = dict(body)
        await self.trigger(key)

    def forget(self, key: ServerKey) -> None:
        self._servers.pop(key, None)

    def facts_of(self, record: FineTuneRecord) -> FineTuneFacts:
        """The run of ``record``, its spec parsed (once per generation)."""
        slot = (str(record.body["metadata"].get("namespace") or ""), record.name)
        version = (record.uid, record.generation)
        held = self._parsed.get(slot)
        if held is None or held[0] != version:
            try:
                held = (version, Run.from_body(record.body, self.settings), "")
            except ValidationError as err:
                held = (version, None, "; ".join(format_errors(err, prefix="spec")))
            self._parsed[slot] = held
        _, run, problem = held
        return FineTuneFacts(
            name=record.name,
            labels=dict(record.labels),
            run=run,
            problem=problem,
            phase=record.phase,
            trained=record.trained,
            deleting=record.deleting,
        )

    async def fine_tune_changed(
        self, namespace: str, name: str, record: FineTuneRecord | None
    ) -> None:
        """A run of ``namespace`` changed (``record`` None: deleted): look at every server
        there, unless nothing a server reads of the run changed (a progress update, say)."""
        signature = None if record is None else record.signature()
        slot = (namespace, name)
        if slot in self._fine_tunes_seen and self._fine_tunes_seen[slot] == signature:
            return
        if record is None:
            self._parsed.pop(slot, None)
            self._fine_tunes_seen.pop(slot, None)
        else:
            self._fine_tunes_seen[slot] = signature
        # In the background: the run's own handlers of this event need not wait for servers.
        for key in self.servers_in(namespace):
            task = asyncio.get_running_loop().create_task(self.trigger(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def trigger(self, key: ServerKey) -> ServerDecision | None:
        """Reconcile ``key`` now, or once more after the pass that is running; a pass
        failed on an API error is tried again after a growing wait (backoff.py)."""
        try:
            decision = await self._passes.run(key, lambda _first: self._reconcile(key))
        except (ApiException, OSError) as err:
            if not kube.namespace_terminating(err):
                delay = self._backoff.failed(key)
                log.warning(
                    "reconcile of server %s/%s failed: %s; tried again in %.0f s",
                    *key, err, delay,
                )  # fmt: skip
                self._later(key, delay)
            return None
        self._backoff.succeeded(key)
        return decision

    def _later(self, key: ServerKey, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, lambda: loop.create_task(self.trigger(key)))

    async def _reconcile(self, key: ServerKey) -> ServerDecision | None:
        namespace, _name = key
        body = self._servers.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            old = QwenModelServerStatus.model_validate(body.get("status") or {})
        except ValidationError:
            old = QwenModelServerStatus()
        try:
            server = Server.from_body(body, self.settings)
        except ValidationError as err:
            await self._report_invalid(key, body, old, err, now)
            return None
        facts = [self.facts_of(r) for r in self.fine_tunes.get(namespace, ())]
        deployment = await self._call(
            kube.get_object, self.clients, "Deployment", namespace, server.deployment_name
        )
        decision = decide_server(server, old, facts, deployment, now)
        if decision.references:
            # The decision took the Deployment's references as present; if a lookup finds
            # otherwise, decide again knowing it.
            known = await self._call(
                kube.look_up_references, self.clients, namespace, decision.references
            )
            if missing(decision.references, known):
                decision = decide_server(server, old, facts, deployment, now, known)
        patched = await self._call(self._execute, server, old, decision, deployment)
        if patched is not None:
            self._remember(key, patched)
        for event in decision.events:
            await self._call(kube.post_event, self.clients, body, event)
        if decision.requeue_after is not None:
            self._later(key, decision.requeue_after)
        return decision

    def _remember(self, key: ServerKey, body: Mapping[str, Any]) -> None:
        if key in self._servers:
            self._servers[key] = dict(body)

    async def _report_invalid(
        self,
        key: ServerKey,
        body: Mapping[str, Any],
        old: QwenModelServerStatus,
        err: ValidationError,
        now: datetime,
    ) -> None:
        message = "; ".join(format_errors(err, prefix="spec"))
        generation = int(body["metadata"].get("generation") or 1)
        conditions = cond.set_condition(
            old.conditions, type=READY, status="False", reason=cond.INVALID_SPEC,
            message=message, generation=generation, now=now,
        )  # fmt: skip
        new = old.model_copy(
            update={
                "phase": ServerPhase.FAILED,
                "conditions": conditions,
                "observed_generation": generation,
            }
        )
        patch = _patch(old, new)
        if patch:
            patched = await self._call(kube.patch_object_status, self.clients, KIND, *key, patch)
            self._remember(key, patched)
            await self._call(kube.post_event, self.clients, body,
                             EmitEvent("Warning", cond.INVALID_SPEC, message))  # fmt: skip

    def _execute(
        self,
        server: Server,
        old: QwenModelServerStatus,
        decision: ServerDecision,
        deployment: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        """The API side of a decision (runs in the thread pool)."""
        namespace = server.namespace
        if decision.service is not None:
            kube.ensure_child(self.clients, "Service", namespace, decision.service)
        if decision.deployment is not None and decision.create:
            kube.ensure_child(self.clients, "Deployment", namespace, decision.deployment)
            log.info("created Deployment %s/%s", namespace, server.deployment_name)
        elif decision.deployment is not None and decision.replace and deployment is not None:
            version = str(deployment["metadata"].get("resourceVersion") or "")
            kube.replace_child(self.clients, "Deployment", namespace, decision.deployment, version)
            log.info("rolling Deployment %s/%s to a new adapter set", namespace,
                     server.deployment_name)  # fmt: skip
        elif decision.delete:
            kube.delete_child(self.clients, "Deployment", namespace, server.deployment_name)
            kube.delete_child(self.clients, "Service", namespace, server.service_name)
        patch = _patch(old, decision.status)
        if not patch:
            return None
        return kube.patch_object_status(self.clients, KIND, namespace, server.name, patch)


def _patch(old: QwenModelServerStatus, new: QwenModelServerStatus) -> dict[str, Any]:
    """Top-level status keys that differ (None removes a key)."""
    before, after = dump(old), dump(new)
    return {
        key: after.get(key)
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }
