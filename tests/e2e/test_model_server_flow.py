"""QwenModelServer on the real control plane: one base, many adapters, one Deployment.

The operator runs as a subprocess against the local API server; kwok runs the pods (Job pods
succeed after a second, Deployment pods become Ready). Covers the whole life of a shared
server:
- three runs over the same base (one asked for by name, one by label selector, one attaching
  itself with spec.inference.server) finish, and the server's Deployment carries all three
  adapters (one --lora-modules name=path each, --max-lora-rank rounded up, every output
  claim mounted read-only); status lists them Serving, with rank, source and path, the
  printer columns show "3/4" and the endpoint, and an Event says each joined;
- a fourth run on another base, matched by the same selector, is refused with reason
  BaseModelMismatch (and a Warning Event), and never reaches the Deployment;
- the self-attached run gets no Deployment of its own; its status points at the server;
- deleting a run rolls the Deployment without its adapter (a new template, rolled out
  until every replica runs it) and an Event says it was removed;
- a server whose token Secret is missing creates no Deployment, says MissingReference with
  the Secret and its spec field (and a Warning Event), and serves once the Secret exists.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest
from kubernetes import client
from operatorkit import children, condition, create_run, example, wait_phase, wait_until
from qwenft_operator.spec import GROUP, VERSION

pytestmark = pytest.mark.e2e
SERVER = "shared"
SERVERS = "qwenmodelservers"


def fine_tune(
    name: str,
    *,
    r: int,
    labels: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """lora-single-gpu, unmerged, served by the shared server instead of its own."""
    inference: dict[str, Any] = {"server": server} if server else {"enabled": False}
    body = example(
        "lora-single-gpu",
        lora={"r": r, "alpha": 2 * r, "targetParameters": []},
        merge={"enabled": False},
        inference=inference,
        evaluationPrompts=[],
    )
    body["metadata"] = {"name": name, "labels": labels or {}}
    if model is not None:
        body["spec"]["model"] = model
    return body


def server_body(base: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenModelServer",
        "metadata": {"name": SERVER},
        "spec": {
            "model": copy.deepcopy(base),
            "engine": "vllm",
            "gpus": 1,
            "adapters": [
                {"fromFineTune": "task-a"},
                {"selector": {"matchLabels": {"team": "nlp"}}},
            ],
        },
    }


def get_server(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, SERVERS, SERVER
    )
    return found


def adapter_states(server: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        a["name"]: (a["state"], a["reason"]) for a in server.get("status", {}).get("adapters", [])
    }


def deployment_command(api: client.ApiClient, namespace: str) -> list[str] | None:
    try:
        dep = client.AppsV1Api(api).read_namespaced_deployment(f"{SERVER}-server", namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    command: list[str] = dep.spec.template.spec.containers[0].command
    return command


def lora_modules(command: list[str]) -> list[str]:
    start = command.index("--lora-modules") + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end]


def server_events(api: client.ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.name={SERVER},involvedObject.kind=QwenModelServer",
    )
    return [(e.type, e.reason, e.message) for e in events.items]


def test_three_adapters_served_a_fourth_refused_and_deletion_removes_one(
    kube_client: client.ApiClient, namespace: str
) -> None:
    base = example("lora-single-gpu")["spec"]["model"]
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SERVERS, server_body(base))
    other_base = {"hub": {"id": "Qwen/Qwen3-8B", "revision": "main"}}
    for body in (
        fine_tune("task-a", r=64),
        fine_tune("task-b", r=32, labels={"team": "nlp"}),
        fine_tune("task-c", r=16, server=SERVER),
        fine_tune("task-d", r=16, labels={"team": "nlp"}, model=other_base),
    ):
        create_run(kube_client, namespace, body)

    expected = {
        "task-a": ("Serving", "Serving"),
        "task-b": ("Serving", "Serving"),
        "task-c": ("Serving", "Serving"),
        "task-d": ("Refused", "BaseModelMismatch"),
    }

    def all_serving() -> dict[str, Any] | None:
        found = get_server(kube_client, namespace)
        return found if adapter_states(found) == expected else None

    served = wait_until("three adapters Serving and one Refused", all_serving, timeout=120)
    status = served["status"]
    assert status["phase"] == "Ready"
    assert (status["adaptersServing"], status["adaptersTotal"], status["adaptersDisplay"]) == (
        3,
        4,
        "3/4",
    )
    assert status["endpoint"]["url"] == f"http://{SERVER}-server.{namespace}.svc:8000/v1"
    by_name = {a["name"]: a for a in status["adapters"]}
    assert {n: (a["source"], a.get("rank")) for n, a in by_name.items()} == {
        "task-a": ("fromFineTune", 64),
        "task-b": ("selector", 32),
        "task-c": ("inferenceServer", 16),
        "task-d": ("selector", 16),
    }
    assert "trained on Qwen/Qwen3-8B@main" in by_name["task-d"]["message"]
    ready = condition(served, "Ready")
    assert ready is not None and ready["status"] == "True"
    accepted = condition(served, "AdaptersAccepted")
    assert (
        accepted is not None and accepted["status"] == "False" and "task-d" in accepted["message"]
    )

    command = deployment_command(kube_client, namespace)
    assert command is not None
    assert lora_modules(command) == [
        "task-a=/adapters/qwenft-runs/task-a",
        "task-b=/adapters/qwenft-runs/task-b",
        "task-c=/adapters/qwenft-runs/task-c",
    ]
    assert command[command.index("--max-lora-rank") + 1] == "64"
    assert command[command.index("--max-loras") + 1] == "3"
    assert not any("task-d" in arg for arg in command)
    dep = client.AppsV1Api(kube_client).read_namespaced_deployment(f"{SERVER}-server", namespace)
    claims = [
        v.persistent_volume_claim
        for v in dep.spec.template.spec.volumes
        if v.persistent_volume_claim
    ]
    assert [(c.claim_name, c.read_only) for c in claims] == [("qwenft-runs", True)]
    assert dep.metadata.owner_references[0].kind == "QwenModelServer"

    # The attached run: Succeeded, no Deployment of its own, pointing at the server.
    run_c = wait_phase(kube_client, namespace, "task-c", "Succeeded", timeout=30)
    served_by = condition(run_c, "Ready")
    assert served_by is not None and served_by["reason"] == "ServedByModelServer"
    assert run_c["status"]["endpoint"] == {
        "url": f"http://{SERVER}-server.{namespace}.svc:8000/v1", "modelName": "task-c",
    }  # fmt: skip
    assert children(kube_client, namespace, "task-c")["Deployment"] == []

    def joined_and_refused() -> list[tuple[str, str, str]] | None:
        events = server_events(kube_client, namespace)
        joined = {m.split()[1] for _, r, m in events if r == "AdapterJoined"}
        refused = [m for t, r, m in events if r == "AdapterRefused" and t == "Warning"]
        ok = joined == {"task-a", "task-b", "task-c"} and any("task-d" in m for m in refused)
        return events if ok else None

    wait_until("an Event per adapter joining or refused", joined_and_refused, timeout=30)

    columns = subprocess.run(
        ["kubectl", "get", "qms", SERVER, "-n", namespace, "--no-headers"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert columns[:5] == [SERVER, "Ready", "3/4", "True", status["endpoint"]["url"]]

    # Deleting a run rolls the Deployment without its adapter.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "qwenfinetunes", "task-b")

    def rolled_without_b() -> dict[str, Any] | None:
        found = get_server(kube_client, namespace)
        command = deployment_command(kube_client, namespace) or []
        states = adapter_states(found)
        done = (
            "task-b" not in states
            and states.get("task-a") == ("Serving", "Serving")
            and found["status"].get("phase") == "Ready"
            and not any("task-b" in arg for arg in command)
        )
        return found if done else None

    after = wait_until("the Deployment to roll without task-b", rolled_without_b, timeout=120)
    assert after["status"]["adaptersDisplay"] == "2/3"
    command = deployment_command(kube_client, namespace)
    assert command is not None and lora_modules(command) == [
        "task-a=/adapters/qwenft-runs/task-a",
        "task-c=/adapters/qwenft-runs/task-c",
    ]
    dep = client.AppsV1Api(kube_client).read_namespaced_deployment(f"{SERVER}-server", namespace)
    assert dep.status.updated_replicas == dep.status.available_replicas == 1
    wait_until(
        "an Event saying task-b was removed",
        lambda: any(
            r == "AdapterRemoved" and "task-b" in m
            for _, r, m in server_events(kube_client, namespace)
        ),
        timeout=30,
    )


def test_a_missing_token_secret_holds_the_deployment_until_it_exists(
    kube_client: client.ApiClient, namespace: str
) -> None:
    base = copy.deepcopy(example("lora-single-gpu")["spec"]["model"])
    base["hub"]["tokenSecretRef"] = {"name": "server-token", "key": "token"}
    body = server_body(base)
    body["spec"]["adapters"] = [{"fromFineTune": "task-a"}]
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SERVERS, body)
    create_run(kube_client, namespace, fine_tune("task-a", r=16))

    def waiting_for_secret() -> dict[str, Any] | None:
        found = get_server(kube_client, namespace)
        ready = condition(found, "Ready")
        return found if ready is not None and ready["reason"] == "MissingReference" else None

    held = wait_until("the server to wait for its token Secret", waiting_for_secret, timeout=120)
    ready = condition(held, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["message"].startswith(
        "waiting for secret server-token for spec.model.hub.tokenSecretRef in namespace "
        f"{namespace} before creating Deployment {SERVER}-server: create it"
    )
    assert held["status"]["phase"] == "Pending"
    assert deployment_command(kube_client, namespace) is None
    assert any(
        (t, r) == ("Warning", "MissingReference") and "server-token" in m
        for t, r, m in server_events(kube_client, namespace)
    )

    client.CoreV1Api(kube_client).create_namespaced_secret(
        namespace, {"metadata": {"name": "server-token"}, "stringData": {"token": "hf_x"}}
    )

    def serving() -> dict[str, Any] | None:
        found = get_server(kube_client, namespace)
        return found if adapter_states(found) == {"task-a": ("Serving", "Serving")} else None

    served = wait_until("the server to serve once the Secret exists", serving, timeout=60)
    assert served["status"]["phase"] == "Ready"
    dep = client.AppsV1Api(kube_client).read_namespaced_deployment(f"{SERVER}-server", namespace)
    env = {e.name: e.value_from for e in dep.spec.template.spec.containers[0].env or []}
    assert env["HF_TOKEN"].secret_key_ref.name == "server-token"
