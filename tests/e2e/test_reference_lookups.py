"""The operator's reference lookups against the real API server.

Covers: Secrets and claims are looked up as metadata only (the answer carries no Secret
data), a ConfigMap is checked for its key, a missing object or key is reported by name,
and many lookups at once over one connection pool each get their own answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client
from qwenft_operator import kube
from qwenft_operator.references import Reference, missing

pytestmark = pytest.mark.e2e

SECRET = Reference("secret", "hf-token", "model.hub.tokenSecretRef")
CLAIM = Reference("persistentvolumeclaim", "qwenft-runs", "output.pvc")
DATASET = Reference("configmap", "support-chats", "dataset.configMap", "train.jsonl")
NO_KEY = Reference("configmap", "support-chats", "evaluation.file", "eval.jsonl")
NO_SECRET = Reference("secret", "absent-token", "model.hub.tokenSecretRef")


@pytest.fixture
def referenced(kube_client: client.ApiClient, e2e_namespace: str) -> str:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_secret(
        e2e_namespace,
        # Large: a lookup that fetched the Secret would move 256 KiB of it.
        {"metadata": {"name": "hf-token"}, "stringData": {"token": "x" * 256 * 1024}},
    )
    core.create_namespaced_config_map(
        e2e_namespace, {"metadata": {"name": "support-chats"}, "data": {"train.jsonl": "{}"}}
    )
    core.create_namespaced_persistent_volume_claim(
        e2e_namespace,
        {
            "metadata": {"name": "qwenft-runs"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    return e2e_namespace


def test_secret_lookup_returns_metadata_only(
    kube_client: client.ApiClient, referenced: str
) -> None:
    clients = kube.Clients(kube_client)
    path = kube.object_path("Secret", referenced, "hf-token")
    answer = clients.request("GET", path, accept=kube.METADATA_ONLY)
    assert answer["kind"] == "PartialObjectMetadata"
    assert answer["metadata"]["name"] == "hf-token"
    assert "data" not in answer and "stringData" not in answer


def test_many_lookups_over_one_pool_each_get_their_answer(
    kube_client: client.ApiClient, referenced: str
) -> None:
    clients = kube.Clients(kube_client)
    refs = [SECRET, CLAIM, DATASET, NO_KEY, NO_SECRET]
    expected = (NO_KEY.describe(), NO_SECRET.describe())

    def check(_: int) -> tuple[str, ...]:
        known = kube.look_up_references(clients, referenced, refs)
        return tuple(ref.describe() for ref in missing(refs, known))

    assert check(0) == expected
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(check, range(40)))
    assert answers == [expected] * 40
