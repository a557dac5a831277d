"""The one module that talks to the Kubernetes API (besides kopf's own watches).

Blocking calls of the official ``kubernetes`` client; the runner calls them from a thread
pool so the kopf event loop never waits on the network. Objects travel as plain dicts
(sent through the client's REST layer; its typed model classes are slow, drop unknown
fields and refuse integer quantities). ``ensure_*`` creates an object unless it exists
(a 409 reads the existing one back), so a restarted operator never makes a second copy;
Secrets are only ever looked up for existence, as metadata: their data is never fetched.

It is over 300 lines because every API call the operator makes lives here, so that nothing
else imports the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from qwenft_operator.actions import ChildKind, EmitEvent
from qwenft_operator.events import build_event
from qwenft_operator.permissions import Access
from qwenft_operator.queueing import (
    WORKLOAD_GROUP,
    WORKLOAD_PLURAL,
    WORKLOAD_VERSION,
    QueueWait,
    read_wait,
    workload_of,
)
from qwenft_operator.references import Found, Known, ObjectKey, Reference
from qwenft_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

POOL_SIZE = 32


# kind -> (API prefix, plural) of the namespaced objects the operator reads or writes.
PATHS: dict[str, tuple[str, str]] = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Secret": ("/api/v1", "secrets"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "QwenFineTune": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "QwenModelServer": (f"/apis/{GROUP}/{VERSION}", "qwenmodelservers"),
}
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Ask for an object's metadata alone (PartialObjectMetadata), not its body.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
REF_KINDS = {
    "secret": "Secret",
    "configmap": "ConfigMap",
    "persistentvolumeclaim": "PersistentVolumeClaim",
}


@dataclass(frozen=True)
class Clients:
    """One authenticated connection pool to the API server.

    Requests go through the client's REST layer with plain JSON bodies: the generated
    typed methods validate bodies against their models, which rejects valid Kubernetes
    JSON such as integer quantities (``cpu: 8``).
    """

    api: client.ApiClient

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Clients:
        """In-cluster credentials when present, else the kubeconfig (``$KUBECONFIG``)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = POOL_SIZE
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """One API call; the JSON answer, or :class:`ApiException` for a 4xx/5xx."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*params)
        if response.status >= 400:
            response.read()
            raise ApiException(http_resp=response)
        data = response.read()
        parsed: dict[str, Any] = json.loads(data) if data else {}
        return parsed


def namespace_terminating(err: Exception) -> bool:
    """Whether the API server refused a write because the namespace is being deleted.

    Its 403 carries the cause ``NamespaceTerminating``; nothing can be created there any
    more, and the namespace's deletion removes the run with it, so there is nothing to retry.
    """
    if not isinstance(err, ApiException) or err.status != 403 or not err.body:
        return False
    try:
        status = json.loads(err.body)
    except (TypeError, ValueError):
        return False
    causes = ((status.get("details") or {}).get("causes") or []) if isinstance(status, dict) else []
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def object_path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def get_run(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The ``QwenFineTune`` as stored, or None when it is gone."""
    try:
        return clients.request("GET", object_path("QwenFineTune", namespace, name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def patch_status(
    clients: Clients, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch ``status`` (the status subresource) with ``patch``."""
    path = object_path("QwenFineTune", namespace, name) + "/status"
    return clients.request("PATCH", path, body={"status": patch}, content_type=MERGE_PATCH)


def post_event(clients: Clients, run: Mapping[str, Any], event: EmitEvent) -> None:
    """Post an Event on ``run``; a refusal is logged, never raised (Events are best effort).

    In a namespace being deleted the refusal is expected and logged at debug level only.
    """
    body = build_event(run, event, datetime.now(UTC))
    namespace = body["metadata"]["namespace"]
    try:
        clients.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
    except ApiException as err:
        if namespace_terminating(err):
            log.debug("event %s on %s/%s dropped: namespace is being deleted", event.reason,
                      namespace, run["metadata"]["name"])  # fmt: skip
        else:
            log.warning("event %s on %s/%s not posted: %s %s", event.reason, namespace,
                        run["metadata"]["name"], err.status, err.reason)  # fmt: skip
    except OSError as err:
        log.warning("event %s on %s/%s not posted: %s", event.reason, namespace,
                    run["metadata"]["name"], err)  # fmt: skip


def ensure_child(
    clients: Clients, kind: ChildKind, namespace: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Create ``body`` unless it exists; returns (the object, whether it was created)."""
    try:
        return clients.request("POST", object_path(kind, namespace), body=body), True
    except ApiException as err:
        if err.status != 409:
            raise
    name = str(body["metadata"]["name"])
    return clients.request("GET", object_path(kind, namespace, name)), False


def get_object(clients: Clients, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """An object of ``kind`` as stored, or None when it is absent."""
    try:
        return clients.request("GET", object_path(kind, namespace, name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def replace_child(
    clients: Clients,
    kind: ChildKind,
    namespace: str,
    body: dict[str, Any],
    resource_version: str | None,
) -> dict[str, Any]:
    """Replace a child's spec and annotations with ``body``'s, as of ``resource_version``.

    A JSON patch (the ``patch`` verb: the operator may not ``update``) that tests the
    resourceVersion first, so a 409/422 means it changed since it was read and the caller
    decides again; ``replace`` on ``/spec`` drops whatever the old spec had that the new
    one hasn't, which a merge patch would keep. Without ``resource_version`` nothing is
    tested: for a body built from the run's spec alone, where the newest spec wins.
    """
    name = str(body["metadata"]["name"])
    test = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}]
    ops = [
        *(test if resource_version is not None else []),
        {"op": "replace", "path": "/spec", "value": body["spec"]},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": body["metadata"].get("annotations") or {},
        },
    ]
    return clients.request(
        "PATCH", object_path(kind, namespace, name), body=ops, content_type=JSON_PATCH
    )


def patch_object_status(
    clients: Clients, kind: str, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch the status subresource of an object of ``kind``."""
    path = object_path(kind, namespace, name) + "/status"
    return clients.request("PATCH", path, body={"status": patch}, content_type=MERGE_PATCH)


def delete_child(clients: Clients, kind: ChildKind, namespace: str, name: str) -> None:
    """Delete a child (its pods first); an absent child is fine."""
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}
    try:
        clients.request("DELETE", object_path(kind, namespace, name), body=options)
    except ApiException as err:
        if err.status != 404:
            raise


def set_job_suspended(clients: Clients, namespace: str, name: str, suspend: bool) -> None:
    """Suspend a Job (its pods are stopped) or let it run again."""
    body = {"spec": {"suspend": suspend}}
    clients.request(
        "PATCH", object_path("Job", namespace, name), body=body, content_type=MERGE_PATCH
    )


def list_children(
    clients: Clients, kind: str, namespace: str, selector: str
) -> list[dict[str, Any]]:
    """Objects of ``kind`` (Job, Pod, Deployment, Service, ConfigMap) matching ``selector``
    (``qwenft logs`` finds a run's pods with it)."""
    found = clients.request("GET", object_path(kind, namespace), query={"labelSelector": selector})
    items: list[dict[str, Any]] = found.get("items") or []
    return items


def look_up_reference(clients: Clients, namespace: str, key: ObjectKey) -> Found | None:
    """A referenced object as found (a ConfigMap with its keys), or None when it is absent.

    An object the operator may not read (RBAC) is taken as present: it can't tell.
    """
    kind, name = key
    path = object_path(REF_KINDS[kind], namespace, name)
    try:
        # Existence only for Secrets and claims: the API server sends the metadata, never
        # a Secret's data.
        accept = "application/json" if kind == "configmap" else METADATA_ONLY
        found = clients.request("GET", path, accept=accept)
    except ApiException as err:
        if err.status == 404:
            return None
        if err.status == 403:
            return Found()
        raise
    if (found.get("metadata") or {}).get("deletionTimestamp"):
        return None  # being deleted: no new pod may mount it
    if kind != "configmap":
        return Found()
    return Found(keys=frozenset({*(found.get("data") or {}), *(found.get("binaryData") or {})}))


def look_up_references(clients: Clients, namespace: str, refs: Iterable[Reference]) -> Known:
    """What exists of the objects ``refs`` name (one call per object)."""
    keys = dict.fromkeys(ref.object for ref in refs)
    return {key: look_up_reference(clients, namespace, key) for key in keys}


def queue_wait(clients: Clients, namespace: str, job: str) -> QueueWait | None:
    """Kueue's reason for holding Job ``job``, from its Workload.

    None when Kueue made no Workload yet, admitted it, or is not installed or readable
    (404/403): the run then says it waits for Kueue without Kueue's words.
    """
    path = f"/apis/{WORKLOAD_GROUP}/{WORKLOAD_VERSION}/namespaces/{namespace}/{WORKLOAD_PLURAL}"
    try:
        found = clients.request("GET", path)
    except ApiException as err:
        if err.status in (403, 404):
            return None
        raise
    workload = workload_of(found.get("items") or [], job)
    return read_wait(workload) if workload is not None else None


def node_labels(clients: Clients, node_selector: Mapping[str, str]) -> list[dict[str, str]] | None:
    """The labels of the nodes ``node_selector`` matches (every node when it is empty).

    None when the operator may not list nodes (403): the GPU-fit check then says the GPU
    memory is unknown instead of failing the run.
    """
    selector = ",".join(f"{key}={value}" for key, value in sorted(node_selector.items()))
    try:
        found = clients.request(
            "GET", "/api/v1/nodes", query={"labelSelector": selector}, accept=METADATA_ONLY_LIST
        )
    except ApiException as err:
        if err.status == 403:
            return None
        raise
    return [
        dict((item.get("metadata") or {}).get("labels") or {}) for item in found.get("items") or []
    ]


ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def denied(clients: Clients, accesses: Iterable[Access]) -> list[Access]:
    """The accesses the API server would refuse this operator (SelfSubjectAccessReview)."""
    refused = []
    for access in accesses:
        attributes = {
            "namespace": access.namespace,
            "group": access.group,
            "resource": access.resource,
            "verb": access.verb,
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = clients.request("POST", ACCESS_REVIEWS, body=review)
        if not (answer.get("status") or {}).get("allowed"):
            refused.append(access)
    return refused
