"""QwenModelServer without a cluster: adapter planning, the decision, the builders, the CRD.

Covers: which adapters join (same base and revision; runs by name, by label selector, by
spec.inference.server, and claim adapters) and why the others don't (another base or
revision, method full, what vLLM can't serve as LoRA, judged by the very function the
QwenFineTune path uses, a rank over vLLM's limit, not trained yet, a failed run, a taken
name); the decision (create, roll on a changed set, Serving once rolled out, delete when
nothing is left, Events for joined / refused / removed adapters, printer fields, nothing
created or rolled while its token Secret or a claim is missing); the
vLLM and builtin command lines (--max-lora-rank rounded up to an accepted value,
--max-loras, --max-cpu-loras, one --lora-modules / --adapter per adapter); the whole
Deployment and Service of examples/multi-task-adapters.yaml against golden files and the
Kubernetes 1.37 schema; the committed CRD equals the generator; its CEL rules refuse what
the pydantic rules refuse; the shipped example validates; a run's status update that
changes nothing a server reads (training progress) wakes no server.
"""

from __future__ import annotations

import asyncio
import copy
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import kubernetes_validate
import pytest
import yaml
from qwenft_operator import crd, kube, labels
from qwenft_operator.builders import serving
from qwenft_operator.model_server import adapters as plan
from qwenft_operator.model_server import builders
from qwenft_operator.model_server.adapters import FineTuneFacts
from qwenft_operator.model_server.controller import ServerController
from qwenft_operator.model_server.decide import decide_server
from qwenft_operator.model_server.fine_tune_index import record_fine_tune
from qwenft_operator.model_server.spec import QwenModelServer
from qwenft_operator.model_server.status import QwenModelServerStatus
from qwenft_operator.parsed_run import Run
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.spec import QwenFineTune
from qwenft_trainer import vllm_serving as rules

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "multi-task-adapters.yaml"
GOLDEN = Path(__file__).parent / "golden" / "model-servers"
UPDATE = os.environ.get("QWENFT_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BASE = {"hub": {"id": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "abc123"}}


def example_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["items"]
    return items


def run_body(name: str, *, r: int = 16, labels: dict[str, str] | None = None,
             **spec: Any) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "apiVersion": "finetune.qwenft.io/v1alpha1",
        "kind": "QwenFineTune",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "labels": labels or {},
        },
        "spec": {
            "model": copy.deepcopy(BASE),
            "dataset": {"configMap": {"name": "data", "key": "train.jsonl"}},
            "lora": {"r": r, "targetParameters": []},
            "output": {"pvc": {"claimName": "runs"}},
            "merge": {"enabled": False},
        },
    }
    for key, value in spec.items():
        body["spec"][key] = value
    return body


def facts(body: dict[str, Any], *, trained: bool = True, phase: str = "Succeeded",
          deleting: bool = False) -> FineTuneFacts:  # fmt: skip
    return FineTuneFacts(
        name=body["metadata"]["name"],
        labels=body["metadata"].get("labels") or {},
        run=Run.from_body(body),
        phase=phase,
        trained=trained,
        deleting=deleting,
    )


def server(adapters: list[dict[str, Any]], **spec: Any) -> builders.Server:
    body = {
        "metadata": {"name": "shared", "namespace": "ml", "uid": "uid-shared", "generation": 2},
        "spec": {"model": copy.deepcopy(BASE), "adapters": adapters, **spec},
    }
    return builders.Server.from_body(body)


def by_name(planned: list[plan.PlannedAdapter]) -> dict[str, plan.PlannedAdapter]:
    return {p.status.name: p for p in planned}


class TestPlanning:
    def test_runs_on_the_same_base_join_and_another_base_is_refused(self) -> None:
        other = run_body("other", model={"hub": {"id": "Qwen/Qwen3-8B", "revision": "abc123"}})
        runs = [facts(run_body(n)) for n in ("a", "b", "c")] + [facts(other)]
        s = server([{"fromFineTune": n} for n in ("a", "b", "c", "other")])
        planned = by_name(plan.plan_adapters(s.name, s.spec, runs))
        assert [p.accepted for p in planned.values()] == [True, True, True, False]
        refused = planned["other"].status
        assert (refused.state, refused.reason) == ("Refused", plan.BASE_MODEL_MISMATCH)
        assert "Qwen/Qwen3-8B@abc123" in refused.message
        assert planned["a"].status.path == "/adapters/runs/a"
        assert planned["a"].claim == "runs"

    def test_another_revision_is_another_base(self) -> None:
        moved = run_body("moved", model={"hub": {"id": BASE["hub"]["id"], "revision": "def456"}})
        s = server([{"fromFineTune": "moved"}])
        (p,) = plan.plan_adapters(s.name, s.spec, [facts(moved)])
        assert p.status.reason == plan.BASE_MODEL_MISMATCH

    def test_vllm_refusals_are_the_fine_tune_paths_own(self) -> None:
        saved = run_body("saved", lora={"r": 16, "targetParameters": [],
                                        "modulesToSave": ["lm_head"]})  # fmt: skip
        s = server([{"fromFineTune": "saved"}])
        (p,) = plan.plan_adapters(s.name, s.spec, [facts(saved)])
        own = serving.vllm_decision(Run.from_body(saved))
        assert own.reasons  # the QwenFineTune path would merge it
        assert p.status.reason == plan.VLLM_UNSUPPORTED
        assert all(reason in p.status.message for reason in own.reasons)
        # The builtin engine loads it with peft.
        (builtin,) = plan.plan_adapters(s.name, server([{"fromFineTune": "saved"}],
                                        engine="builtin", gpus=0).spec, [facts(saved)])  # fmt: skip
        assert builtin.accepted

    def test_rank_over_vllms_largest_is_refused(self) -> None:
        big = run_body("big", r=1024)
        (p,) = plan.plan_adapters("shared", server([{"fromFineTune": "big"}]).spec, [facts(big)])
        assert p.status.reason == plan.VLLM_UNSUPPORTED
        assert "above vLLM's largest --max-lora-rank" in p.status.message
        limited = server([{"fromFineTune": "a"}], vllm={"maxLoraRank": 16})
        (q,) = plan.plan_adapters("shared", limited.spec, [facts(run_body("a", r=32))])
        assert (q.status.reason, q.status.rank) == (plan.RANK_ABOVE_LIMIT, 32)

    def test_untrained_missing_failed_and_full_runs(self) -> None:
        s = server([{"fromFineTune": n} for n in ("running", "absent", "broken", "full")])
        runs = [
            facts(run_body("running"), trained=False, phase="Training"),
            facts(run_body("broken"), trained=False, phase="Failed"),
            facts(run_body("full", method="full", lora={"r": 16})),
        ]
        got = {k: (v.status.state, v.status.reason)
               for k, v in by_name(plan.plan_adapters(s.name, s.spec, runs)).items()}  # fmt: skip
        assert got == {
            "running": ("Pending", plan.NOT_TRAINED),
            "absent": ("Pending", plan.FINE_TUNE_NOT_FOUND),
            "broken": ("Refused", plan.FINE_TUNE_FAILED),
            "full": ("Refused", plan.NOT_AN_ADAPTER),
        }

    def test_selector_attachment_pvc_and_names(self) -> None:
        tagged = [facts(run_body(n, labels={"team": "nlp"})) for n in ("t1", "t2")]
        attached = run_body("att", inference={"server": "shared", "servedModelName": "t1"})
        gone = facts(run_body("gone", labels={"team": "nlp"}), deleting=True)
        s = server([
            {"selector": {"matchLabels": {"team": "nlp"}}},
            {"pvc": {"claimName": "adapters", "path": "sql"}, "name": "sql", "rank": 8},
            {"fromFineTune": "t1", "name": "t1-again"},
        ])  # fmt: skip
        planned = plan.plan_adapters(s.name, s.spec, [*tagged, facts(attached), gone])
        got = [(p.status.name, p.status.source, p.status.reason) for p in planned]
        assert got == [
            ("t1", "selector", plan.ROLLING_OUT),
            ("t2", "selector", plan.ROLLING_OUT),
            ("sql", "pvc", plan.ROLLING_OUT),
            # t1 was asked for twice: once is enough; att wants t1's name.
            ("t1", "inferenceServer", plan.DUPLICATE_NAME),
        ]
        assert planned[2].status.path == "/adapters/adapters/sql"

    def test_a_server_serves_at_most_max_served(self) -> None:
        many = [facts(run_body(f"r{i:03d}", labels={"team": "all"})) for i in range(257)]
        s = server([{"selector": {"matchLabels": {"team": "all"}}}])
        planned = plan.plan_adapters(s.name, s.spec, many)
        assert sum(p.accepted for p in planned) == plan.MAX_SERVED == 256
        assert planned[-1].status.reason == plan.TOO_MANY_ADAPTERS
        status = decide_server(s, QwenModelServerStatus(), many, None, NOW).status
        assert status.endpoint is not None and len(status.endpoint.models) == 256

    def test_an_adapter_named_like_the_base_is_refused(self) -> None:
        s = server([{"fromFineTune": "a", "name": "shared"}])
        (p,) = plan.plan_adapters(s.name, s.spec, [facts(run_body("a"))])
        assert p.status.reason == plan.DUPLICATE_NAME


def rolled(body: dict[str, Any], *, replicas: int = 1) -> dict[str, Any]:
    """``body`` as the Deployment controller leaves it once every replica is updated."""
    out = copy.deepcopy(body)
    out["metadata"].update(generation=3, resourceVersion="42")
    out["status"] = {
        "observedGeneration": 3,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True"}],
    }
    return out


class TestDecision:
    runs: ClassVar = [facts(run_body(n, r=r)) for n, r in (("a", 64), ("b", 32), ("c", 16))]
    spec: ClassVar = [{"fromFineTune": n} for n in ("a", "b", "c", "other")]
    other: ClassVar = facts(run_body("other", model={"hub": {"id": "Qwen/Qwen3-8B"}}))

    def test_first_pass_creates_and_reports_pending(self) -> None:
        s = server(self.spec)
        d = decide_server(s, QwenModelServerStatus(), [*self.runs, self.other], None, NOW)
        assert d.create and not d.replace and d.deployment is not None and d.service is not None
        assert [a.state for a in d.status.adapters] == ["Pending"] * 3 + ["Refused"]
        assert d.status.adapters_display == "0/4"
        assert d.status.phase == "Deploying"
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "AdapterRefused")]
        assert d.status.endpoint is not None
        assert d.status.endpoint.url == "http://shared-server.ml.svc:8000/v1"

    def test_rolled_out_set_is_serving_and_a_change_rolls(self) -> None:
        s = server(self.spec)
        first = decide_server(s, QwenModelServerStatus(), [*self.runs, self.other], None, NOW)
        assert first.deployment is not None
        live = rolled(first.deployment)
        second = decide_server(s, first.status, [*self.runs, self.other], live, NOW)
        assert not second.create and not second.replace
        assert second.status.adapters_display == "3/4"
        assert second.status.phase == "Ready"
        assert [e.reason for e in second.events] == ["AdapterJoined"] * 3
        # Run b is deleted: the set changes, the Deployment rolls, an Event says so.
        remaining = [self.runs[0], self.runs[2], self.other]
        third = decide_server(s, second.status, remaining, live, NOW)
        assert third.replace and third.deployment is not None
        args = third.deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert "b=/adapters/runs/b" not in args
        assert [e.reason for e in third.events] == ["AdapterRemoved"]
        assert third.status.phase == "Deploying"
        # a and c go on serving from the old pods; b waits for its run to come back.
        assert {a.name: (a.state, a.reason) for a in third.status.adapters} == {
            "a": ("Serving", plan.SERVING),
            "b": ("Pending", plan.FINE_TUNE_NOT_FOUND),
            "c": ("Serving", plan.SERVING),
            "other": ("Refused", plan.BASE_MODEL_MISMATCH),
        }
        assert third.status.adapters_display == "2/4"

    def test_a_spec_change_alone_rolls_too(self) -> None:
        s = server(self.spec)
        first = decide_server(s, QwenModelServerStatus(), [*self.runs, self.other], None, NOW)
        assert first.deployment is not None
        live = rolled(first.deployment)
        assert not decide_server(s, first.status, [*self.runs, self.other], live, NOW).replace
        # the same adapters, two replicas: the Deployment is replaced with them
        scaled = server(self.spec, replicas=2)
        d = decide_server(scaled, first.status, [*self.runs, self.other], live, NOW)
        assert d.replace and d.deployment is not None and d.deployment["spec"]["replicas"] == 2
        assert d.status.phase == "Deploying"
        # a Deployment without the spec digest (an older operator's) is replaced once
        old = copy.deepcopy(live)
        del old["metadata"]["annotations"][labels.SPEC_DIGEST_ANNOTATION]
        assert decide_server(s, first.status, [*self.runs, self.other], old, NOW).replace

    def test_nothing_to_serve_deletes(self) -> None:
        s = server([{"fromFineTune": "a"}])
        first = decide_server(s, QwenModelServerStatus(), [self.runs[0]], None, NOW)
        assert first.deployment is not None
        gone = decide_server(s, first.status, [], rolled(first.deployment), NOW)
        assert gone.delete and gone.deployment is None and gone.status.phase == "Pending"


class TestReferences:
    """The Deployment's Secret and claims are looked up before it is created or replaced."""

    token: ClassVar = {"tokenSecretRef": {"name": "hf", "key": "token"}}
    token_base: ClassVar = {"hub": {**BASE["hub"], **token}}
    runs: ClassVar = [facts(run_body("a"))]

    def test_a_missing_token_secret_holds_the_deployment_back_and_says_what_to_create(
        self,
    ) -> None:
        s = server([{"fromFineTune": "a"}], model=self.token_base)
        asked = decide_server(s, QwenModelServerStatus(), self.runs, None, NOW)
        assert asked.create
        assert [(r.object, r.field) for r in asked.references] == [
            (("persistentvolumeclaim", "runs"), "volume adapters-0"),
            (("secret", "hf"), "model.hub.tokenSecretRef"),
        ]
        known = {("secret", "hf"): None, ("persistentvolumeclaim", "runs"): kube.Found()}
        held = decide_server(s, QwenModelServerStatus(), self.runs, None, NOW, known)
        assert not held.create and not held.replace
        assert held.status.phase == "Pending"
        ready = next(c for c in held.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("False", "MissingReference")
        assert ready.message == (
            "waiting for secret hf for spec.model.hub.tokenSecretRef in namespace ml before "
            "creating Deployment shared-server: create it, or change the spec that names it"
        )
        assert [(e.type, e.reason) for e in held.events] == [("Warning", "MissingReference")]
        assert held.requeue_after == 1.0  # a Secret: looked for again soon
        # the next pass, still missing: no second Event
        again = decide_server(s, held.status, self.runs, None, NOW, known)
        assert not again.create and [e.reason for e in again.events] == []
        # the Secret exists: the Deployment is created
        known[("secret", "hf")] = kube.Found()
        made = decide_server(s, again.status, self.runs, None, NOW, known)
        assert made.create and made.requeue_after is None and made.status.phase == "Deploying"

    def test_a_missing_adapter_claim_holds_a_roll_back(self) -> None:
        s = server([{"fromFineTune": "a"}, {"fromFineTune": "b"}])
        first = decide_server(s, QwenModelServerStatus(), self.runs, None, NOW)
        assert first.deployment is not None
        live = rolled(first.deployment)
        other_claim = facts(run_body("b", output={"pvc": {"claimName": "more-runs"}}))
        known = {("persistentvolumeclaim", "more-runs"): None}
        held = decide_server(s, first.status, [*self.runs, other_claim], live, NOW, known)
        assert not held.replace and held.status.phase == "Deploying"
        ready = next(c for c in held.status.conditions if c.type == "Ready")
        assert ready.reason == "MissingReference"
        assert ready.message.startswith(
            "waiting for persistentvolumeclaim more-runs for volume adapters-0 in namespace ml "
            "before rolling out Deployment shared-server:"
        )
        assert held.requeue_after == 10.0
        # present: the roll goes ahead
        rolls = decide_server(s, first.status, [*self.runs, other_claim], live, NOW, {})
        assert rolls.replace


class TestCommandLines:
    def test_vllm_rank_rounded_up_and_one_module_each(self) -> None:
        runs = [facts(run_body("a", r=48)), facts(run_body("b", r=8))]
        s = server([{"fromFineTune": "a"}, {"fromFineTune": "b"}])
        accepted = plan.plan_adapters(s.name, s.spec, runs)
        args = builders.build_vllm_args(s, accepted)
        assert args[args.index("--max-lora-rank") + 1] == "64" == str(rules.round_up_lora_rank(48))
        assert args[args.index("--max-loras") + 1] == "2"
        assert args[args.index("--max-cpu-loras") + 1] == "2"
        start = args.index("--lora-modules") + 1
        assert args[start : start + 2] == ["a=/adapters/runs/a", "b=/adapters/runs/b"]
        assert args[args.index("--revision") + 1] == "abc123"

    def test_vllm_settings_given(self) -> None:
        s = server([{"fromFineTune": "a"}], vllm={"maxLoras": 1, "maxCpuLoras": 4,
                                                   "maxLoraRank": 100})  # fmt: skip
        accepted = plan.plan_adapters(s.name, s.spec, [facts(run_body("a", r=16))])
        args = builders.build_vllm_args(s, accepted)
        assert args[args.index("--max-lora-rank") + 1] == "128"
        assert args[args.index("--max-loras") + 1] == "1"
        assert args[args.index("--max-cpu-loras") + 1] == "4"

    def test_builtin_adapter_per_run(self) -> None:
        runs = [facts(run_body("a")), facts(run_body("b"))]
        s = server([{"fromFineTune": "a"}, {"fromFineTune": "b"}], engine="builtin", gpus=0)
        args = builders.build_builtin_args(s, plan.plan_adapters(s.name, s.spec, runs))
        assert args[:3] == ["qwenft", "serve", "--model"]
        pairs = [args[i + 1] for i, a in enumerate(args) if a == "--adapter"]
        assert pairs == ["a=/adapters/runs/a", "b=/adapters/runs/b"]
        assert args[args.index("--served-model-name") + 1] == "shared"


def example_objects(engine: str) -> dict[str, dict[str, Any]]:
    items = example_items()
    server_body = copy.deepcopy(items[0])
    server_body["metadata"].update(namespace="ml", uid="uid-qms", generation=1)
    if engine == "builtin":
        server_body["spec"].update(engine="builtin")
        server_body["spec"].pop("vllm")
    s = builders.Server.from_body(server_body)
    runs = []
    for body in items[1:]:
        body = copy.deepcopy(body)
        body["metadata"].update(namespace="ml", uid="uid-run")
        runs.append(facts(body))
    accepted = plan.plan_adapters(s.name, s.spec, runs)
    assert all(a.accepted for a in accepted)
    return {
        f"deployment-{engine}": builders.build_server_deployment(s, accepted),
        "service": builders.build_server_service(s),
    }


CASES = [("vllm", "deployment-vllm"), ("vllm", "service"), ("builtin", "deployment-builtin")]


@pytest.mark.parametrize(("engine", "kind"), CASES)
def test_example_matches_golden(engine: str, kind: str) -> None:
    built = example_objects(engine)[kind]
    golden = GOLDEN / "multi-task-adapters" / f"{kind}.yaml"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(yaml.safe_dump(built, sort_keys=False, width=100), encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}: run with QWENFT_UPDATE_GOLDEN=1"
    assert built == yaml.safe_load(golden.read_text(encoding="utf-8")), (
        f"{kind} changed; if intended, regenerate with QWENFT_UPDATE_GOLDEN=1"
    )


def test_no_stale_golden_files() -> None:
    expected = {GOLDEN / "multi-task-adapters" / f"{kind}.yaml" for _, kind in CASES}
    assert set(GOLDEN.glob("*/*.yaml")) == expected


@pytest.mark.parametrize(("engine", "kind"), CASES)
def test_valid_kubernetes_object(engine: str, kind: str) -> None:
    try:
        kubernetes_validate.validate(example_objects(engine)[kind], "1.37.0", strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{kind}: {str(err).splitlines()[0]}")


def test_rollout_never_drops_below_the_replicas() -> None:
    deployment = example_objects("vllm")["deployment-vllm"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "QwenModelServer"


def test_example_validates() -> None:
    items = example_items()
    assert EXAMPLE.read_text().startswith("# kubectl apply -f examples/multi-task-adapters.yaml")
    QwenModelServer.model_validate(items[0])
    runs = [QwenFineTune.model_validate(item) for item in items[1:]]
    shapes = {(r.spec.inference.served_model_name, r.spec.lora.r,
               tuple(r.spec.lora.target_modules or ())) for r in runs}  # fmt: skip
    assert shapes == {
        ("code_generation", 64, ("q_proj", "k_proj", "v_proj", "o_proj")),
        ("text_analysis", 32, ("o_proj", "down_proj")),
    }
    assert {r.spec.inference.server for r in runs} == {items[0]["metadata"]["name"]}


def test_committed_crd_matches_the_generator() -> None:
    committed = ROOT / crd.MODEL_SERVER_CRD_PATH
    assert committed.read_text(encoding="utf-8") == crd.render_crd(crd.MODEL_SERVER)
    assert crd.main(["--kind", "QwenModelServer", "--check", str(committed)]) == 0
    names = crd.build_crd(crd.MODEL_SERVER)["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "QwenModelServer", "qwenmodelservers", ["qms"],
    )  # fmt: skip


celpy = pytest.importorskip("celpy", reason="cel-python evaluates the CRD's CEL rules")
SCHEMA: dict[str, Any] = yaml.safe_load(
    (ROOT / crd.MODEL_SERVER_CRD_PATH).read_text(encoding="utf-8")
)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def cel_messages(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every CEL rule of ``schema`` that ``value`` breaks, as the API server runs them."""
    env = celpy.Environment()
    found = []
    for rule in schema.get("x-kubernetes-validations", []):
        result = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        if not result:
            found.append(rule["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += cel_messages(value[name], sub)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            found += cel_messages(item, schema["items"])
    return found


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adapters": [{"fromFineTune": "a", "pvc": {"claimName": "c", "path": "p"}}]},
         "set exactly one adapter source"),
        ({"adapters": [{"pvc": {"claimName": "c", "path": "p"}}]}, "a pvc adapter needs name"),
        ({"adapters": [{"selector": {"matchLabels": {"a": "b"}}, "name": "x"}]},
         "a selector matches many runs"),
        ({"adapters": [{"fromFineTune": "a", "rank": 8}]}, "rank is read from the run"),
        ({"engine": "vllm", "gpus": 0}, "engine vllm needs at least one GPU"),
        ({"engine": "builtin", "vllm": {}}, "vllm settings are for engine vllm"),
        ({"vllm": {"maxLoras": 4, "maxCpuLoras": 2}}, "maxCpuLoras must be at least maxLoras"),
        ({"adapters": [{"selector": {"matchLabels": {"bad key!": "x"}}}]},
         "matchLabels keys must be label keys"),
    ],
)  # fmt: skip
def test_cel_and_pydantic_refuse_alike(change: dict[str, Any], message: str) -> None:
    spec = {"model": copy.deepcopy(BASE), "engine": "vllm", "gpus": 1, **change}
    errors = cel_messages(spec, SCHEMA["properties"]["spec"])
    assert any(e.startswith(message) for e in errors), errors
    with pytest.raises(ValueError, match=message):
        builders.Server.from_body({"metadata": {"name": "s"}, "spec": spec})


def test_schema_is_structural() -> None:
    """Only constructs the API server accepts in a CRD (no $ref, no patternProperties)."""
    text = (ROOT / crd.MODEL_SERVER_CRD_PATH).read_text(encoding="utf-8")
    for construct in ("$ref", "patternProperties", "propertyNames", "$defs", "allOf", "nullable"):
        assert construct not in text


def test_cel_accepts_the_example() -> None:
    assert cel_messages(example_items()[0]["spec"], SCHEMA["properties"]["spec"]) == []


class RecordingController(ServerController):
    """The controller with its reconcile replaced by a note of which server it was for."""

    def __init__(self) -> None:
        super().__init__(cast(kube.Clients, None), OperatorConfig(), cast(Any, None))
        self.woken: list[tuple[str, str]] = []

    async def trigger(self, key: tuple[str, str]) -> None:
        self.woken.append(key)


def test_only_what_servers_read_of_a_run_wakes_them() -> None:
    controller = RecordingController()
    asyncio.run(controller.server_changed(("ml", "shared"), {"metadata": {"name": "shared"}}))
    controller.woken.clear()
    body = run_body("a")
    body["metadata"]["generation"] = 1
    body["status"] = {"phase": "Training", "progress": {"step": 1}}

    def changed(new: dict[str, Any] | None, namespace: str = "ml") -> int:
        before = len(controller.woken)
        record = None if new is None else record_fine_tune(new)

        async def tell() -> None:
            await controller.fine_tune_changed(namespace, "a", record)
            await asyncio.gather(*controller._tasks)  # the reconciles it started

        asyncio.run(tell())
        return len(controller.woken) - before

    assert changed(body) == 1
    body["status"]["progress"] = {"step": 2}  # training progress: nothing a server reads
    assert changed(body) == 0
    body["status"]["conditions"] = [{"type": "Trained", "status": "True"}]
    assert changed(body) == 1
    body["metadata"]["labels"] = {"team": "nlp"}
    assert changed(body) == 1
    assert changed(None) == 1  # deleted
    assert changed(body, namespace="elsewhere") == 0  # no server there
    facts = controller.facts_of(record_fine_tune(body))
    assert facts.trained and facts.run is not None and facts.labels == {"team": "nlp"}
