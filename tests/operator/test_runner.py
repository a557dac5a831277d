"""The runner: reconciles carried out against a stand-in API (no cluster).

Covers: a new run gets its validation Job, a status patch and a phase Event, in that
order; the echo of the operator's own status patch wakes nothing; a child event that
changes nothing the decision sees wakes nothing, while a real change reconciles; a pod
with nothing to report (signature None) wakes nothing and is not held; triggers
for a run being reconciled are coalesced into one more pass, never run side by side; a
deleted run is forgotten, also when it goes between its read and its status patch (no error
counted, nothing retried); parsed specs are reused until the generation changes; a Ready
run's smoke test runs once in the background, its outcome is patched into the status by
the reconcile it wakes, and later reconciles of the same generation send nothing; a
progress round scrapes only the runs in Training; the references a decision checked are
looked up once each (ConfigMaps the watch's index holds not at all), shared by runs of one
namespace; a dataset ConfigMap deleted while validation runs is reported and holds the
training Job back until the ConfigMap is there again, its watch events waking only the
runs that use it; a Secret created after the run is noticed within 2 s; a Secret deleted
under a running training Job is reported by the run's periodic recheck, with no event.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException
from qwenft_operator import progress as progress_module
from qwenft_operator import runner as runner_module
from qwenft_operator import smoke as smoke_module
from qwenft_operator.builders import serving, training, validation
from qwenft_operator.metrics import OperatorMetrics
from qwenft_operator.observe import JobFacts, PodFacts, parse_deployment, parse_job
from qwenft_operator.parsed_run import Run
from qwenft_operator.references import Found, RecentLookups
from qwenft_operator.runner import Runner
from qwenft_operator.settings import OperatorConfig
from qwenft_operator.status import Progress, SmokeOutcome, SmokeTest

EXAMPLE = Path(__file__).parents[2] / "examples" / "lora-single-gpu.yaml"
KEY = ("team", "support-lora")


class FakeApi:
    """The kube functions the runner calls, recording what it asked for."""

    def __init__(self) -> None:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"].update(
            namespace="team", uid="u1", generation=1, resourceVersion="10",
            creationTimestamp="2026-01-01T00:00:00Z",
        )  # fmt: skip
        self.body: dict[str, Any] | None = body
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0
        self.absent: set[tuple[str, str]] = set()

    def get_run(self, clients: Any, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        return copy.deepcopy(self.body)

    def patch_status(self, clients: Any, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.calls.append("patch " + ",".join(sorted(patch)))
        assert self.body is not None
        self.body.setdefault("status", {}).update(patch)
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.active -= 1
        return copy.deepcopy(self.body)

    def ensure_child(self, clients: Any, kind: str, namespace: str, body: Any) -> Any:
        self.calls.append(f"create {kind} {body['metadata']['name']}")
        return body, True

    def node_labels(self, clients: Any, selector: dict[str, str]) -> list[dict[str, str]]:
        return [{"nvidia.com/gpu.memory": "81920"}]  # an A100-80GB node (GPU Feature Discovery)

    def look_up_reference(self, clients: Any, namespace: str, key: Any) -> Found | None:
        self.calls.append(f"look up {key[0]} {key[1]}")
        if key in self.absent:
            return None
        return Found(frozenset({"train.jsonl"})) if key[0] == "configmap" else Found()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    for name in ("get_run", "patch_status", "ensure_child", "look_up_reference", "node_labels"):
        monkeypatch.setattr(runner_module.kube, name, getattr(fake, name))
    events: list[str] = []
    monkeypatch.setattr(
        runner_module.kube, "post_event", lambda clients, body, event: events.append(event.reason)
    )
    fake.events = events  # type: ignore[attr-defined]
    return fake


# The example's references, looked up once each (the first decision names them).
LOOKUPS = [
    "look up secret hf-token",
    "look up configmap support-chats",
    "look up persistentvolumeclaim qwenft-runs",
]


def passes(runner: Runner) -> int:
    """Reconcile passes so far, as the operator's metrics count them."""
    count = runner.metrics.registry.get_sample_value(
        "qwenft_operator_reconcile_duration_seconds_count"
    )
    return int(count or 0)


async def wait_for(probe: Callable[[], bool], timeout: float) -> None:
    """Return once ``probe()`` holds; fail at ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def make_runner() -> Runner:
    return Runner(object(), OperatorConfig(), OperatorMetrics(), workers=2)  # type: ignore[arg-type]


def test_new_run_creates_validation_then_patches_and_reports(api: FakeApi) -> None:
    runner = make_runner()

    async def scenario() -> None:
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert api.calls == [
        *LOOKUPS,
        "create Job support-lora-validate",
        "patch children,conditions,observedGeneration,phase",
    ]
    assert api.events == ["Validating"]  # type: ignore[attr-defined]


def test_own_patch_echo_and_unchanged_children_wake_nothing(api: FakeApi) -> None:
    runner = make_runner()

    async def scenario() -> None:
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]
        api.calls.clear()
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # the status patch's echo
        assert api.calls == []
        child = ("Job", "support-lora-validate")
        runner.indexes.jobs = {KEY: [JobFacts("support-lora-validate", "Active")]}
        await runner.child_changed(KEY, child, ("Active", 0, ""), deleted=False)
        await runner.child_changed(KEY, child, ("Active", 0, ""), deleted=False)
        assert api.calls == []  # running validation: status already says so
        runner.indexes.jobs = {KEY: [JobFacts("support-lora-validate", "Succeeded")]}
        await runner.child_changed(KEY, child, ("Succeeded", 0, ""), deleted=False)

    asyncio.run(scenario())
    assert api.calls[:2] == [
        "create ConfigMap support-lora-config",
        "create Job support-lora-train",
    ]
    assert "get" not in api.calls  # the run came from events and patch answers


def test_a_pod_with_nothing_to_report_wakes_nobody_and_is_not_held(api: FakeApi) -> None:
    """A training pod's signature is the scheduler's verdict, None while it has none."""
    runner = make_runner()
    pod = ("Pod", "support-lora-train-0-x")

    async def scenario() -> None:
        await runner.child_changed(KEY, pod, None, deleted=False)
        assert passes(runner) == 0
        await runner.child_changed(KEY, pod, "0/5 nodes are available", deleted=False)
        await runner.child_changed(KEY, pod, "0/5 nodes are available", deleted=False)
        assert passes(runner) == 1
        await runner.child_changed(KEY, pod, None, deleted=False)  # scheduled: look again
        assert passes(runner) == 2
        await runner.child_changed(KEY, pod, None, deleted=False)  # None was not held
        assert passes(runner) == 2
        await runner.child_changed(KEY, pod, "0/5 nodes are available", deleted=False)
        assert passes(runner) == 3

    asyncio.run(scenario())


def test_triggers_are_coalesced_not_concurrent(api: FakeApi) -> None:
    runner = make_runner()

    async def scenario() -> None:
        # The first pass waits for its read of the run; the other four arrive meanwhile.
        await asyncio.gather(*(runner.trigger(KEY) for _ in range(5)))

    asyncio.run(scenario())
    assert passes(runner) == 2  # the first pass, and one more for the four triggers during it
    assert api.max_active == 1


def test_deleted_run_is_forgotten_and_spec_parse_reused(api: FakeApi) -> None:
    runner = make_runner()
    body = copy.deepcopy(api.body)
    assert body is not None
    first = runner.runs.run_of(KEY, body)
    assert runner.runs.run_of(KEY, body) is first
    body["metadata"]["generation"] = 2
    assert runner.runs.run_of(KEY, body) is not first
    api.body = None

    async def scenario() -> Any:
        return await runner.trigger(KEY)

    assert asyncio.run(scenario()) is None
    assert not runner.runs.holds(KEY)


def test_run_deleted_before_its_status_patch_is_forgotten_without_an_error(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleted (e.g. with its namespace) between its read and its patch: the patch's 404 ends
    the reconcile quietly; a 404 while the run still exists is an error, counted and retried."""
    runner = make_runner()
    caplog.set_level(logging.INFO, logger=runner_module.__name__)

    def retried() -> list[str]:
        return [
            r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "tried again" in r.msg
        ]

    gone_on_patch = True

    def patch_status(clients: Any, namespace: str, name: str, patch: Any) -> Any:
        if gone_on_patch:
            api.body = None
        raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(runner_module.kube, "patch_status", patch_status)
    body = copy.deepcopy(api.body)

    async def scenario() -> Any:
        return await runner.trigger(KEY, body)

    assert asyncio.run(scenario()) is None
    assert not runner.runs.holds(KEY)
    assert api.events == []  # type: ignore[attr-defined]
    assert retried() == []
    errors = runner.metrics.reconcile_errors.labels(reason="api404")
    assert errors._value.get() == 0

    gone_on_patch = False
    api.body = copy.deepcopy(body)
    for _ in range(3):
        with pytest.raises(ApiException):
            asyncio.run(scenario())
    # Each failure in a row waits twice as long; the run is counted as retrying.
    assert retried() == ["2 s", "4 s", "8 s"]
    assert errors._value.get() == 3
    assert runner.metrics.runs_retrying._value.get() == 1

    # A reconcile that gets through resets the wait.
    monkeypatch.setattr(runner_module.kube, "patch_status", lambda *args: api.body)
    asyncio.run(scenario())
    assert runner.metrics.runs_retrying._value.get() == 0
    monkeypatch.setattr(runner_module.kube, "patch_status", patch_status)
    with pytest.raises(ApiException):
        asyncio.run(scenario())
    assert retried()[-1] == "2 s"


def test_ready_run_is_smoke_tested_once(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = make_runner()
    asked: list[tuple[str, str, int, int]] = []

    async def fake_smoke_test(url: str, model: str, prompts: Any, *, generation: int) -> Any:
        asked.append((url, model, len(prompts), generation))
        return SmokeOutcome(generation, SmokeTest(passed=True, total=len(prompts)), True)

    monkeypatch.setattr(smoke_module, "run_smoke_test", fake_smoke_test)
    runner.indexes.jobs = {
        KEY: [JobFacts(f"{KEY[1]}-{step}", "Succeeded") for step in ("train", "merge")]
    }
    # the Deployment the runner's decision builds for the run, available
    run = Run.from_body(api.body, OperatorConfig())
    built = serving.build_serve_deployment(run, serving.build_serve_target(run))
    facts = dataclasses.replace(parse_deployment(built), ready_replicas=1, available=True)
    runner.indexes.deployments = {KEY: [facts]}

    def smoke_recorded() -> bool:
        return api.body is not None and "smokeTest" in api.body.get("status", {})

    async def scenario() -> None:
        await runner.trigger(KEY, copy.deepcopy(api.body))
        # The test runs in the background; its outcome wakes the run, which records it.
        await wait_for(smoke_recorded, timeout=10)
        await runner.trigger(KEY)

    asyncio.run(scenario())
    assert asked == [("http://support-lora-serve.team.svc:8000/v1", "support-assistant", 1, 1)]
    assert api.body is not None
    status = api.body["status"]
    assert status["phase"] == "Ready"
    assert status["smokeTest"]["passed"] is True
    smoke = next(c for c in status["conditions"] if c["type"] == "SmokeTested")
    assert (smoke["status"], smoke["reason"]) == ("True", "SmokeTestPassed")
    assert api.events[-1] == "SmokeTestPassed"  # type: ignore[attr-defined]


def test_progress_round_reads_training_runs_only(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round of the progress reader scrapes each run in Training, whose rank-0 pod has
    an address, and patches what it read; runs in other phases are not scraped."""
    runner = make_runner()
    scraped: list[str] = []

    async def fake_fetch(session: Any, url: str, *, run: str) -> Any:
        scraped.append(url)
        return progress_module.TrainerProgress(Progress(step=7, total_steps=70))

    monkeypatch.setattr(progress_module, "fetch_progress", fake_fetch)
    training, validating = copy.deepcopy(api.body), copy.deepcopy(api.body)
    assert training is not None and validating is not None
    training["status"] = {"phase": "Training"}
    validating["status"] = {"phase": "Validating"}
    other = ("team", "other-run")
    runner.runs.remember(KEY, training)
    runner.runs.remember(other, validating)
    rank_zero = PodFacts(
        name="support-lora-train-0-abc", component="train", phase="Running",
        pod_ip="127.244.0.9", completion_index=0,
    )  # fmt: skip
    runner.indexes.pods = {KEY: [rank_zero], other: [dataclasses.replace(rank_zero, pod_ip="x")]}

    async def scenario() -> None:
        await runner.progress.read_all()
        await runner.progress.close()

    asyncio.run(scenario())
    assert scraped == ["http://127.244.0.9:9400/metrics"]
    assert api.calls == ["patch progress"]
    assert api.body is not None
    assert api.body["status"]["progress"]["step"] == 7


def test_runs_sharing_references_look_them_up_once(api: FakeApi) -> None:
    """A sweep of runs over one dataset and claim checks them for the first run only."""
    runner = make_runner()
    second = copy.deepcopy(api.body)
    assert second is not None
    second["metadata"].update(name="support-lora-2", uid="u2")

    async def scenario() -> None:
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]
        await runner.run_changed(("team", "support-lora-2"), second)

    asyncio.run(scenario())
    assert [c for c in api.calls if c.startswith("look up")] == LOOKUPS
    assert "create Job support-lora-2-validate" in api.calls


DATASET = ("configmap", "support-chats")
TOKEN = ("secret", "hf-token")


def validation_job(state: str) -> JobFacts:
    """The example's validation Job as the watch parses it (with what its pods mount)."""
    run = Run.from_body(yaml.safe_load(EXAMPLE.read_text()))
    facts = parse_job(validation.build_validation_job(run))
    return dataclasses.replace(facts, state=state)  # type: ignore[arg-type]


def test_a_dataset_deleted_before_training_holds_the_job_until_it_is_back(api: FakeApi) -> None:
    """The watch's index answers for ConfigMaps; its events wake the runs that use one."""
    runner = make_runner()
    validate = ("Job", "support-lora-validate")
    index = {("team", "support-chats"): [Found(frozenset({"train.jsonl"}))]}

    async def scenario() -> None:
        runner.indexes.config_maps = index
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]
        assert "look up configmap support-chats" not in api.calls  # the index had it
        runner.indexes.jobs = {KEY: [validation_job("Active")]}
        await runner.child_changed(KEY, validate, ("Active", 0, ""), deleted=False)
        api.calls.clear()
        runner.indexes.config_maps = {}  # deleted: gone from the index, and from the API
        api.absent.add(DATASET)
        await runner.reference_changed("team", DATASET, deleted=True)
        await runner.reference_changed("team", ("configmap", "unrelated"), deleted=True)
        assert api.calls.count("look up configmap support-chats") == 1
        assert api.calls.count("get") == 1  # the run read afresh: it may be going too
        conditions = {c["type"]: c for c in api.body["status"]["conditions"]}  # type: ignore[index]
        assert conditions["ResolvedRefs"]["reason"] == "MissingReference"
        assert "used by Job support-lora-validate" in conditions["ResolvedRefs"]["message"]
        runner.indexes.jobs = {KEY: [validation_job("Succeeded")]}
        await runner.child_changed(KEY, validate, ("Succeeded", 0, ""), deleted=False)
        assert not any(c.startswith("create") for c in api.calls)
        conditions = {c["type"]: c for c in api.body["status"]["conditions"]}  # type: ignore[index]
        assert conditions["Training"]["reason"] == "MissingReference"
        api.absent.clear()
        runner.indexes.config_maps = index
        await runner.reference_changed("team", DATASET, deleted=False)

    asyncio.run(scenario())
    assert api.calls[-3:-1] == [
        "create ConfigMap support-lora-config",
        "create Job support-lora-train",
    ]
    assert api.events.count("MissingReference") == 2  # type: ignore[attr-defined]


def test_a_secret_created_after_the_run_is_noticed_within_seconds(api: FakeApi) -> None:
    runner = make_runner()
    api.absent.add(TOKEN)

    async def scenario() -> None:
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]
        assert api.body is not None and api.body["status"]["phase"] == "Pending"
        api.absent.clear()
        created = asyncio.get_running_loop().time()
        deadline = created + 5.0
        while "create Job support-lora-validate" not in api.calls:
            assert asyncio.get_running_loop().time() < deadline, api.calls
            await asyncio.sleep(0.05)
        noticed = asyncio.get_running_loop().time() - created
        assert noticed < 2.0, noticed  # looked for again after 1 s, not 30

    asyncio.run(scenario())


def test_a_secret_deleted_under_a_running_job_is_found_by_the_recheck(api: FakeApi) -> None:
    runner = Runner(
        object(),  # type: ignore[arg-type]
        OperatorConfig(),
        OperatorMetrics(),
        workers=2,
        secret_recheck_seconds=0.3,
    )
    runner.lookups = RecentLookups(found_ttl=0.1)
    run = Run.from_body(yaml.safe_load(EXAMPLE.read_text()))
    train = dataclasses.replace(
        parse_job(training.build_train_job(run)), state="Active", ready=1, active=1
    )
    runner.indexes.jobs = {KEY: [validation_job("Succeeded"), train]}

    def resolved_refs() -> dict[str, Any] | None:
        assert api.body is not None
        found = [c for c in api.body["status"]["conditions"] if c["type"] == "ResolvedRefs"]
        return found[0] if found else None

    async def scenario() -> None:
        await runner.run_changed(KEY, copy.deepcopy(api.body))  # type: ignore[arg-type]
        assert resolved_refs() is None
        api.absent.add(TOKEN)
        deadline = asyncio.get_running_loop().time() + 5.0
        while resolved_refs() is None:
            assert asyncio.get_running_loop().time() < deadline, api.calls
            await asyncio.sleep(0.05)
        runner.forget(KEY)  # no look left pending at the end

    asyncio.run(scenario())
    found = resolved_refs()
    assert found is not None and found["reason"] == "MissingReference"
    assert "secret hf-token for spec.model.hub.tokenSecretRef" in found["message"]
    assert "used by Job support-lora-train" in found["message"]
