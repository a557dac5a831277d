"""The API server refuses every invalid QwenFineTune with a message naming the field.

Covers: each case of tests/operator/invalid_manifests.py (bounds, enums, formats, required
fields, one-of sources, cross-field CEL rules, the run's name, unknown fields under strict
field validation) sent to the real API server with the generated CRD installed: refused
with 422 Invalid (unknown fields: 400 strict decoding error) and the field's path in the
message; the immutable fields (model,
dataset, method) refused as updates of a stored run; the valid base manifest accepted.
No operator runs: this is the CRD's schema and CEL alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from operatorkit import install_crd
from qwenft_operator.spec import GROUP, PLURAL, VERSION

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from invalid_manifests import BASE_MANIFEST, CASES, UPDATE_CASES, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def crd(kube_client: client.ApiClient) -> Iterator[None]:
    install_crd(kube_client)
    yield


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def refusal(call: Any, status: int = 422) -> str:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == status, err.value.body
    body = json.loads(err.value.body)
    return str(body.get("message", ""))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_manifest_is_refused_naming_the_field(
    kube_client: client.ApiClient, e2e_namespace: str, crd: None, case: Any
) -> None:
    # Unknown fields fail strict decoding (400 BadRequest); the rest fail validation (422).
    status = 400 if case.strict else 422
    message = refusal(lambda: create(kube_client, e2e_namespace, build(case)), status)
    assert case.field in message, message


@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c.id for c in UPDATE_CASES])
def test_immutable_field_change_is_refused(
    kube_client: client.ApiClient, e2e_namespace: str, crd: None, case: Any
) -> None:
    stored = create(kube_client, e2e_namespace, BASE_MANIFEST)
    changed = build(case)
    changed["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    name = stored["metadata"]["name"]
    message = refusal(
        lambda: client.CustomObjectsApi(kube_client).replace_namespaced_custom_object(
            GROUP, VERSION, e2e_namespace, PLURAL, name, changed
        )
    )
    assert case.field in message and "immutable" in message, message


def test_base_manifest_is_accepted(
    kube_client: client.ApiClient, e2e_namespace: str, crd: None
) -> None:
    stored = create(kube_client, e2e_namespace, BASE_MANIFEST)
    assert stored["spec"]["lora"]["r"] >= 1  # defaults applied by the API server
