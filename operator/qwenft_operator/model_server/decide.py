"""The server decision: (server, its namespace's runs, its Deployment, now) -> what to do.

Pure and level-based, like :func:`qwenft_operator.reconcile.decide`: it plans the adapters
(:mod:`.adapters`), builds the Deployment and Service that serve the accepted ones
(:mod:`.builders`), and says whether the Deployment must be created, replaced (what it
would be built as changed: the adapter set, replicas, image, ...; its spec digest
differs) or deleted (nothing to serve). An accepted adapter is Serving once the Deployment
has rolled out with it; an Event is asked for each adapter that starts serving, is
refused, or leaves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qwenft_operator import conditions as cond
from qwenft_operator import labels
from qwenft_operator.actions import EmitEvent
from qwenft_operator.model_server import adapters as plan
from qwenft_operator.model_server import builders
from qwenft_operator.model_server.status import (
    MAX_ADAPTER_RECORDS,
    AdapterStatus,
    QwenModelServerStatus,
    ServerEndpoint,
    ServerPhase,
)
from qwenft_operator.observe import parse_deployment
from qwenft_operator.references import (
    Known,
    Reference,
    describe_all,
    missing,
    model_references,
    secret_retry_after,
    template_references,
)

# Condition types of a server.
READY = "Ready"  # every replica serves the current adapter set
ADAPTERS_ACCEPTED = "AdaptersAccepted"  # False while some adapter is refused
# Reasons.
NO_ADAPTERS = "NoAdapters"  # nothing can be served yet: no Deployment
ROLLING_OUT = "RollingOut"  # the Deployment is rolling out the current adapter set
SERVING = "Serving"  # every replica serves the current set
DEPLOY_FAILED = cond.DEPLOY_FAILED  # the rollout is stuck (image, crash loop, deadline)
ALL_ACCEPTED = "AllAccepted"  # no adapter is refused
SOME_REFUSED = "SomeRefused"  # at least one adapter is refused (status.adapters says why)
# Event reasons.
ADAPTER_JOINED = "AdapterJoined"
ADAPTER_REFUSED = "AdapterRefused"
ADAPTER_REMOVED = "AdapterRemoved"


@dataclass(frozen=True)
class ServerDecision:
    """The status the server should have and what to do to its children.

    ``deployment`` is the body to create (``create``) or replace (``replace``), or None
    with ``delete`` when nothing is served.
    """

    status: QwenModelServerStatus
    service: dict[str, Any] | None
    deployment: dict[str, Any] | None
    create: bool = False
    replace: bool = False
    delete: bool = False
    events: tuple[EmitEvent, ...] = ()
    # What the Deployment's pods need, to be looked up before it is created or replaced.
    references: tuple[Reference, ...] = ()
    # Seconds until the server is looked at again (a missing reference), or None.
    requeue_after: float | None = None


def rolled_out(deployment: Mapping[str, Any], digest: str) -> bool:
    """Whether every replica of ``deployment`` runs the template with ``digest`` and is
    available (the controller has seen the newest spec, no old pod is left)."""
    if (deployment.get("metadata", {}).get("annotations") or {}).get(
        labels.SPEC_DIGEST_ANNOTATION
    ) != digest:
        return False
    facts = parse_deployment(deployment)
    status = deployment.get("status") or {}
    replicas = facts.replicas
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    return facts.available and updated >= replicas and total <= replicas


def decide_server(
    server: builders.Server,
    old: QwenModelServerStatus,
    fine_tunes: Sequence[plan.FineTuneFacts],
    deployment: Mapping[str, Any] | None,
    now: datetime,
    known: Known | None = None,
) -> ServerDecision:
    """The next status of ``server`` and its children's bodies.

    ``known`` is what exists of the Deployment's references; an object not in it is taken
    as present (the first decision, whose ``references`` say what to look up).
    """
    planned = plan.plan_adapters(server.name, server.spec, fine_tunes)
    accepted = [a for a in planned if a.accepted]
    conditions = list(old.conditions)

    def set_condition(type_: str, status: cond.ConditionStatus, reason: str, msg: str) -> None:
        nonlocal conditions
        conditions = cond.set_condition(
            conditions,
            type=type_,
            status=status,
            reason=reason,
            message=msg,
            generation=server.generation,
            now=now,
        )

    body = service = None
    create = replace = delete = False
    refs: tuple[Reference, ...] = ()
    requeue_after = None
    events: list[EmitEvent] = []
    if not accepted:
        delete = deployment is not None
        phase = ServerPhase.PENDING
        set_condition(READY, "False", NO_ADAPTERS, "no adapter can be served yet")
        live = False
    else:
        body = builders.build_server_deployment(server, accepted)
        service = builders.build_server_service(server)
        digest = body["metadata"]["annotations"][labels.SPEC_DIGEST_ANNOTATION]
        create = deployment is None
        current = deployment is not None and (
            (deployment.get("metadata", {}).get("annotations") or {}).get(
                labels.SPEC_DIGEST_ANNOTATION
            )
            == digest
        )
        replace = deployment is not None and not current
        live = deployment is not None and current and rolled_out(deployment, digest)
        failed = deployment is not None and current and parse_deployment(deployment).failed
        if create or replace:
            refs = _named_by_spec(server, template_references(body))
        gone = missing(refs, known or {})
        if gone:
            message = _waiting_message(server, gone, "creating" if create else "rolling out")
            create = replace = False
            phase = ServerPhase.PENDING if deployment is None else ServerPhase.DEPLOYING
            if not _said_before(old, message):
                events.append(EmitEvent("Warning", cond.MISSING_REFERENCE, message))
            set_condition(READY, "False", cond.MISSING_REFERENCE, message)
            requeue_after = _retry_after(old, gone, now)
        elif live:
            phase = ServerPhase.READY
            set_condition(READY, "True", SERVING, f"serving {len(accepted)} adapters")
        elif failed:
            assert deployment is not None
            phase = ServerPhase.FAILED
            set_condition(READY, "False", DEPLOY_FAILED, parse_deployment(deployment).message)
        else:
            phase = ServerPhase.DEPLOYING
            set_condition(READY, "False", ROLLING_OUT,
                          f"Deployment {server.deployment_name} rolling out "
                          f"{len(accepted)} adapters")  # fmt: skip
    before = {a.name: a for a in old.adapters}
    statuses = [_final_state(a, live=live, was=before.get(a.status.name)) for a in planned]
    refused = [s for s in statuses if s.state == "Refused"]
    if refused:
        names = ", ".join(f"{s.name} ({s.reason})" for s in refused)
        set_condition(ADAPTERS_ACCEPTED, "False", SOME_REFUSED, f"refused: {names}")
    else:
        set_condition(ADAPTERS_ACCEPTED, "True", ALL_ACCEPTED, "no adapter is refused")
    serving = sum(s.state == "Serving" for s in statuses)
    status = QwenModelServerStatus(
        phase=phase,
        conditions=conditions,
        observed_generation=server.generation,
        endpoint=ServerEndpoint(
            url=builders.endpoint_url(server), models=[a.status.name for a in accepted]
        )
        if accepted
        else None,
        adapters=statuses[:MAX_ADAPTER_RECORDS],
        adapters_serving=serving,
        adapters_total=len(statuses),
        adapters_display=f"{serving}/{len(statuses)}",
        deployment=server.deployment_name if accepted else None,
    )
    return ServerDecision(
        status=status,
        service=service,
        deployment=body,
        create=create,
        replace=replace,
        delete=delete,
        events=(*events, *_events(old.adapters, statuses)),
        references=refs,
        requeue_after=requeue_after,
    )


def _named_by_spec(server: builders.Server, pod_refs: Sequence[Reference]) -> tuple[Reference, ...]:
    """``pod_refs`` with the base model's objects named by their spec field."""
    by_object = {ref.object: ref for ref in model_references(server.spec.model)}
    return tuple(by_object.get(ref.object, ref) for ref in pod_refs)


# Seconds between looks while only claims are missing (no watch of claims wakes a server).
MISSING_CLAIM_RETRY = 10.0


def _waiting_message(server: builders.Server, gone: Sequence[Reference], step: str) -> str:
    fix = "create it" if len(gone) == 1 else "create them"
    return (
        f"waiting for {describe_all(gone)} in namespace {server.namespace} before {step} "
        f"Deployment {server.deployment_name}: {fix}, or change the spec that names "
        f"{'it' if len(gone) == 1 else 'them'}"
    )


def _said_before(old: QwenModelServerStatus, message: str) -> bool:
    """Whether the old Ready condition already says ``message``."""
    before = cond.get_condition(old.conditions, READY)
    return before is not None and (before.reason, before.message) == (
        cond.MISSING_REFERENCE,
        message,
    )


def _retry_after(old: QwenModelServerStatus, gone: Sequence[Reference], now: datetime) -> float:
    """Soon while a Secret has been missing a short while, then less often."""
    if not any(ref.kind == "secret" for ref in gone):
        return MISSING_CLAIM_RETRY
    before = cond.get_condition(old.conditions, READY)
    missing_since = (
        before.last_transition_time
        if before is not None and before.reason == cond.MISSING_REFERENCE
        else None
    )
    waited = (now - missing_since).total_seconds() if missing_since is not None else 0.0
    return secret_retry_after(waited)


def _final_state(
    adapter: plan.PlannedAdapter, *, live: bool, was: AdapterStatus | None
) -> AdapterStatus:
    """Accepted adapters serve once the Deployment rolled out with them; one that served
    already (same path) keeps serving from the old pods while a roll adds others."""
    if not adapter.accepted:
        return adapter.status
    still = was is not None and was.state == "Serving" and was.path == adapter.status.path
    if live or still:
        message = "" if live else "served by the current pods while the Deployment rolls"
        return adapter.status.model_copy(
            update={"state": "Serving", "reason": plan.SERVING, "message": message}
        )
    return adapter.status.model_copy(
        update={"message": "the Deployment is rolling out with it; the old pods serve meanwhile"}
    )


def _events(before: Sequence[AdapterStatus], after: Sequence[AdapterStatus]) -> list[EmitEvent]:
    """One Event per adapter that started serving, was refused (or refused for another
    reason), stopped serving (its run is gone) or is no longer asked for."""
    old = {a.name: a for a in before}
    events: list[EmitEvent] = []
    for adapter in after:
        was = old.pop(adapter.name, None)
        if adapter.state == "Serving" and (was is None or was.state != "Serving"):
            message = f"adapter {adapter.name} joined: served from {adapter.path}"
            events.append(EmitEvent("Normal", ADAPTER_JOINED, message))
        elif adapter.state == "Pending" and was is not None and was.state == "Serving":
            message = f"adapter {adapter.name} removed from the server: {adapter.message}"
            if adapter.reason == plan.ROLLING_OUT:  # still wanted: only a roll (e.g. a new path)
                continue
            events.append(EmitEvent("Normal", ADAPTER_REMOVED, message))
        elif adapter.state == "Refused" and (
            was is None or was.state != "Refused" or was.reason != adapter.reason
        ):
            message = f"adapter {adapter.name} refused ({adapter.reason}): {adapter.message}"
            events.append(EmitEvent("Warning", ADAPTER_REFUSED, message))
    for name, was in old.items():
        message = f"adapter {name} removed: no longer asked for"
        if was.fine_tune:
            message = (
                f"adapter {name} removed: QwenFineTune {was.fine_tune} is gone or no longer "
                "selected"
            )
        events.append(EmitEvent("Normal", ADAPTER_REMOVED, message))
    return events
