"""kopf registrations: which events wake which run, and nothing else.

Every handler hands off to the :class:`~qwenft_operator.runner.Runner` in a line or two. A
run is reconciled on every watch event of its own (created, found at start-up, changed; the
echo of the operator's own status patch is skipped) and when one of its Jobs or Deployments,
or one of its Job pods, changes in a way the decision can see (watched server-side by the
managed-by label): the validator's exit 0, a training pod that ended (its gang may restart),
the scheduler's verdict on a pod no node fits, and a container the kubelet can't start for a
missing Secret or ConfigMap. Otherwise pods are only indexed (the failed pod's exit code and
message, rank 0's address). ConfigMaps and PersistentVolumeClaims are indexed and watched
without a label filter (the ones runs reference are the user's own): one appearing, changing
or going wakes the runs that use it (:meth:`Runner.reference_changed`). Secrets are not
watched (the operator may not list them); the runner looks them up. The reconcile is level-
based and idempotent, so the run's events use ``kopf.on.event`` rather than kopf's change-
detecting handlers, which deep-copy and diff every event of the run and write bookkeeping
annotations on it (a third of the operator's CPU with 100 runs at once); API errors are
retried by the runner's requeue, and a spec that can never work is reported by a Failed
condition.
Training progress is read by the runner's own timer
(:class:`~qwenft_operator.progress_reader.ProgressReader`) rather than a ``kopf.timer``,
which would put a finalizer on every run entering Training and take it off again: two more
writes, and two more reconciles, per run.
Handlers are registered on a registry passed in, with the operator settings, so nothing is
registered at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import kopf

from qwenft_operator import kube, labels
from qwenft_operator.builders import serving
from qwenft_operator.kopf_typing import typed
from qwenft_operator.metrics import OperatorMetrics, RunKey
from qwenft_operator.model_server import handlers as server_handlers
from qwenft_operator.observe import (
    PodFacts,
    parse_claim,
    parse_config_map,
    parse_deployment,
    parse_job,
    parse_pod,
)
from qwenft_operator.references import ObjectKey
from qwenft_operator.runner import Indexes, Runner
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.spec import GROUP, PLURAL, VERSION

MANAGED = {labels.MANAGED_BY_KEY: labels.MANAGED_BY}
NAME_KEY = labels.NAME_KEY
# Pods of the run's Jobs (the server's pods are followed through their Deployment).
JOB_PODS = {**MANAGED, labels.COMPONENT_KEY: kopf.PRESENT}
JOB_COMPONENTS = ("validate", "train", "merge")
# The children watched, as kopf selectors: (group, plural), "v1" being the core group.
CHILD_RESOURCES = (("batch", "jobs"), ("v1", "pods"), ("apps", "deployments"))


class NoDiffBase(kopf.DiffBaseStorage):
    """No change-detecting handlers, so nothing to diff: skip kopf's copy of every body.

    kopf builds a "diff base" (a deep copy of the object) for each watch event of a
    resource with handlers; with only event handlers here, that copy is pure overhead.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def _server_refused(pod: PodFacts) -> bool:
    """A server pod that exited because spec.inference.checkpoint isn't kept."""
    failure = pod.failure
    return (
        pod.component == "serve"
        and failure is not None
        and failure.exit_code == serving.CHECKPOINT_NOT_FOUND_EXIT_CODE
    )


def _owner(namespace: str | None, meta_labels: kopf.Labels) -> RunKey:
    return (namespace or "", meta_labels.get(labels.NAME_KEY, ""))


def _runner(memo: kopf.Memo) -> Runner:
    runner: Runner = memo["runner"]
    return runner


def _use_indexes(runner: Runner, kwargs: dict[str, Any]) -> None:
    runner.indexes = Indexes(
        jobs=kwargs["qwenft_jobs"],
        pods=kwargs["qwenft_pods"],
        deployments=kwargs["qwenft_deployments"],
        config_maps=kwargs["qwenft_config_maps"],
        claims=kwargs["qwenft_claims"],
    )


async def _child_changed(
    memo: kopf.Memo,
    kwargs: dict[str, Any],
    key: RunKey,
    child: tuple[str, str],
    signature: Hashable,
    *,
    deleted: bool,
) -> None:
    runner = _runner(memo)
    _use_indexes(runner, kwargs)
    await runner.child_changed(key, child, signature, deleted=deleted)


def register(registry: kopf.OperatorRegistry, settings: OperatorConfig) -> None:
    """Register every handler of the operator on ``registry``."""
    server_handlers.register(registry, settings)
    run = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}

    @typed(kopf.on.login(registry=registry))
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @typed(kopf.on.startup(registry=registry))
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.posting.level = logging.INFO  # only the operator's explicit Events are posted
        for resource in CHILD_RESOURCES:
            settings.watching.label_selectors[resource] = labels.MANAGED_SELECTOR
        operator_settings: OperatorConfig = memo["settings"]
        if operator_settings.namespaces:
            # Exact namespaces need no namespace list/watch (which the chart's namespaced
            # RBAC does not grant); resources are then discovered once at start.
            settings.scanning.disabled = True
        metrics = OperatorMetrics()
        memo["metrics_server"] = metrics.serve(operator_settings.metrics_port)
        runner = Runner(kube.Clients.connect(), operator_settings, metrics)
        runner.progress.start(operator_settings.progress_interval)
        memo["runner"] = runner

    @typed(kopf.on.cleanup(registry=registry))
    async def shutdown(memo: kopf.Memo, **_: Any) -> None:
        if "runner" in memo:
            await _runner(memo).close()
        if "metrics_server" in memo:
            server, _thread = memo["metrics_server"]
            server.shutdown()

    @typed(kopf.on.probe(id="runs", registry=registry))
    def tracked_runs(memo: kopf.Memo, **_: Any) -> int:
        return _runner(memo).metrics.tracked_runs if "runner" in memo else 0

    @typed(kopf.index("batch", "v1", "jobs", id="qwenft_jobs", labels=MANAGED, registry=registry))
    def qwenft_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        return {_owner(namespace, labels): parse_job(body)}

    @typed(kopf.index("v1", "pods", id="qwenft_pods", labels=MANAGED, registry=registry))
    def qwenft_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        return {_owner(namespace, labels): parse_pod(body)}

    @typed(
        kopf.index(
            "apps", "v1", "deployments", id="qwenft_deployments", labels=MANAGED, registry=registry
        )
    )
    def qwenft_deployments(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        if NAME_KEY not in labels:  # a QwenModelServer's (model_server.handlers)
            return None
        return {_owner(namespace, labels): parse_deployment(body)}

    @typed(kopf.on.event(**run))
    async def run_changed(
        type: str | None, namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        runner = _runner(memo)
        if type == "DELETED":
            runner.forget((namespace, name))
            return
        _use_indexes(runner, kwargs)
        await runner.run_changed((namespace, name), body)

    @typed(kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry))
    async def job_changed(
        namespace: str, labels: kopf.Labels, body: kopf.Body, type: str | None, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        job = parse_job(body)
        signature = (job.state, job.ready, job.reason, job.uid, job.deleting)
        await _child_changed(memo, kwargs, _owner(namespace, labels), ("Job", job.name),
                             signature, deleted=type == "DELETED")  # fmt: skip

    @typed(kopf.on.event("v1", "pods", labels=JOB_PODS, registry=registry))
    async def job_pod_changed(
        namespace: str, labels: kopf.Labels, body: kopf.Body, type: str | None, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        pod = parse_pod(body)
        if pod.component not in JOB_COMPONENTS and not _server_refused(pod):
            return
        deleted = type == "DELETED"
        verdict = pod.unschedulable.message if pod.unschedulable and not deleted else None
        if pod.component == "validate":
            # Its exit 0 matters (see reconcile._validator_exited_zero); failures come
            # through the Job, which decides whether the pod is retried.
            signature: Hashable = (pod.phase == "Succeeded", verdict, pod.config_error)
        elif pod.component == "serve":
            # A server that exited at start for a missing checkpoint fails the run.
            signature, deleted = ("refused", pod.failure), False
        elif pod.component == "train" and pod.failed and not deleted:
            # A training pod that ended: a disrupted or stopped rank is not counted by
            # the Job, but its gang restarts (qwenft_operator.gang).
            signature, deleted = ("ended", pod.disruption, pod.failure), False
        else:
            # Only the scheduler's verdict and the kubelet's refusal to start a container
            # (None: nothing to report, which a pod that never had one doesn't wake its
            # run for); other exits come through the Job.
            refused = pod.config_error if not deleted else None
            signature = (verdict, refused) if verdict or refused else None
            deleted = False
        await _child_changed(memo, kwargs, _owner(namespace, labels), ("Pod", pod.name),
                             signature, deleted=deleted)  # fmt: skip

    @typed(kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry))
    async def deployment_changed(
        namespace: str, labels: kopf.Labels, body: kopf.Body, type: str | None, memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        if NAME_KEY not in labels:  # a QwenModelServer's (model_server.handlers)
            return
        dep = parse_deployment(body)
        # the digest: a Deployment whose spec was replaced (by the operator or anyone) wakes its run
        signature = (dep.available, dep.failed, dep.ready_replicas, dep.checkpoint, dep.digest)
        await _child_changed(memo, kwargs, _owner(namespace, labels), ("Deployment", dep.name),
                             signature, deleted=type == "DELETED")  # fmt: skip

    @typed(kopf.index("v1", "configmaps", id="qwenft_config_maps", registry=registry))
    def qwenft_config_maps(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): parse_config_map(body)}

    @typed(kopf.index("v1", "persistentvolumeclaims", id="qwenft_claims", registry=registry))
    def qwenft_claims(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): parse_claim(body)}

    @typed(kopf.on.event("v1", "configmaps", registry=registry))
    async def config_map_changed(
        namespace: str, name: str, type: str | None, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        runner = _runner(memo)
        _use_indexes(runner, kwargs)
        await runner.reference_changed(namespace, ("configmap", name), deleted=type == "DELETED")

    @typed(kopf.on.event("v1", "persistentvolumeclaims", registry=registry))
    async def claim_changed(
        namespace: str, name: str, type: str | None, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        runner = _runner(memo)
        _use_indexes(runner, kwargs)
        claim: ObjectKey = ("persistentvolumeclaim", name)
        await runner.reference_changed(namespace, claim, deleted=type == "DELETED")
