"""The one module that talks to the Kubernetes API (besides kopf's own watches).

Blocking calls of the official ``kubernetes`` client; the runner calls them from a thread
pool so the kopf event loop never waits on the network. Objects travel as plain dicts
(``_preload_content=False`` skips the client's model classes, which are slow and drop
unknown fields). ``ensure_*`` creates an object unless it exists (a 409 reads the existing
one back), so a restarted operator never makes a second copy; Secrets are only ever
looked up for existence, their data is neither parsed nor logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from qwenft_operator.actions import ChildKind
from qwenft_operator.references import Reference
from qwenft_operator.spec import GROUP, PLURAL, VERSION

POOL_SIZE = 32


@dataclass(frozen=True)
class Clients:
    """Typed API groups over one connection pool."""

    api: client.ApiClient
    core: client.CoreV1Api
    batch: client.BatchV1Api
    apps: client.AppsV1Api
    custom: client.CustomObjectsApi

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Clients:
        """In-cluster credentials when present, else the kubeconfig (``$KUBECONFIG``)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = POOL_SIZE
        return cls.of(client.ApiClient(configuration))

    @classmethod
    def of(cls, api: client.ApiClient) -> Clients:
        return cls(
            api=api,
            core=client.CoreV1Api(api),
            batch=client.BatchV1Api(api),
            apps=client.AppsV1Api(api),
            custom=client.CustomObjectsApi(api),
        )

    def close(self) -> None:
        self.api.close()


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


def get_run(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The ``QwenFineTune`` as stored, or None when it is gone."""
    try:
        return _json(
            clients.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
            )
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def patch_status(
    clients: Clients, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch ``status`` (the status subresource) with ``patch``."""
    return _json(
        clients.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": patch}, _preload_content=False
        )
    )


def _create(clients: Clients, kind: ChildKind, namespace: str, body: dict[str, Any]) -> Any:
    match kind:
        case "Job":
            return clients.batch.create_namespaced_job(namespace, body, _preload_content=False)
        case "ConfigMap":
            return clients.core.create_namespaced_config_map(
                namespace, body, _preload_content=False
            )
        case "Service":
            return clients.core.create_namespaced_service(namespace, body, _preload_content=False)
        case "Deployment":
            return clients.apps.create_namespaced_deployment(
                namespace, body, _preload_content=False
            )


def read_child(clients: Clients, kind: ChildKind, namespace: str, name: str) -> dict[str, Any]:
    match kind:
        case "Job":
            response = clients.batch.read_namespaced_job(name, namespace, _preload_content=False)
        case "ConfigMap":
            response = clients.core.read_namespaced_config_map(
                name, namespace, _preload_content=False
            )
        case "Service":
            response = clients.core.read_namespaced_service(name, namespace, _preload_content=False)
        case "Deployment":
            response = clients.apps.read_namespaced_deployment(
                name, namespace, _preload_content=False
            )
    return _json(response)


def ensure_child(
    clients: Clients, kind: ChildKind, namespace: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Create ``body`` unless it exists; returns (the object, whether it was created)."""
    try:
        return _json(_create(clients, kind, namespace, body)), True
    except ApiException as err:
        if err.status != 409:
            raise
    return read_child(clients, kind, namespace, str(body["metadata"]["name"])), False


def delete_child(clients: Clients, kind: ChildKind, namespace: str, name: str) -> None:
    """Delete a child (its pods first); an absent child is fine."""
    options = client.V1DeleteOptions(propagation_policy="Foreground")
    try:
        match kind:
            case "Job":
                clients.batch.delete_namespaced_job(name, namespace, body=options)
            case "ConfigMap":
                clients.core.delete_namespaced_config_map(name, namespace, body=options)
            case "Service":
                clients.core.delete_namespaced_service(name, namespace, body=options)
            case "Deployment":
                clients.apps.delete_namespaced_deployment(name, namespace, body=options)
    except ApiException as err:
        if err.status != 404:
            raise


def set_job_suspended(clients: Clients, namespace: str, name: str, suspend: bool) -> None:
    """Suspend a Job (its pods are stopped) or let it run again."""
    clients.batch.patch_namespaced_job(
        name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False
    )


def list_children(
    clients: Clients, kind: ChildKind | str, namespace: str, selector: str
) -> list[dict[str, Any]]:
    """Objects of ``kind`` (Job, Pod, Deployment, Service, ConfigMap) matching ``selector``."""
    lister = {
        "Job": clients.batch.list_namespaced_job,
        "Pod": clients.core.list_namespaced_pod,
        "Deployment": clients.apps.list_namespaced_deployment,
        "Service": clients.core.list_namespaced_service,
        "ConfigMap": clients.core.list_namespaced_config_map,
    }[kind]
    items: list[dict[str, Any]] = _json(
        lister(namespace, label_selector=selector, _preload_content=False)
    )["items"]
    return items


def _exists(clients: Clients, ref: Reference, namespace: str) -> bool | None:
    """True/False, or None when the operator may not look (RBAC) so it can't tell."""
    try:
        if ref.kind == "secret":
            response = clients.core.read_namespaced_secret(
                ref.name, namespace, _preload_content=False
            )
            response.release_conn()  # never read: the data stays unparsed
            return True
        if ref.kind == "persistentvolumeclaim":
            clients.core.read_namespaced_persistent_volume_claim(
                ref.name, namespace, _preload_content=False
            ).release_conn()
            return True
        found = _json(
            clients.core.read_namespaced_config_map(ref.name, namespace, _preload_content=False)
        )
        keys = {*(found.get("data") or {}), *(found.get("binaryData") or {})}
        return ref.key is None or ref.key in keys
    except ApiException as err:
        if err.status == 404:
            return False
        if err.status == 403:
            return None
        raise


def missing_references(
    clients: Clients, namespace: str, refs: Iterable[Reference]
) -> tuple[str, ...]:
    """Descriptions of the references that don't exist (or lack their key)."""
    return tuple(ref.describe() for ref in refs if _exists(clients, ref, namespace) is False)
