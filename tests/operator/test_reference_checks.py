"""References checked when they are used: the decision before each child and while it runs.

Covers: a dataset ConfigMap missing (or lacking its key) when the training Job is due: no
Job, ConfigMap or Service created, the run waits in Training with Training False
``MissingReference`` naming the object, its spec field, the Job and the fix, one Warning
Event, and ResolvedRefs False; once it exists the step creates its children and
ResolvedRefs turns True with a Normal Event; the merge Job waiting for the output claim
and the server Deployment for the token Secret; a missing Secret looked for again after 1 s,
then 2 s, then 5 s as the wait grows (ConfigMaps and claims: a 30 s fallback, their watch
wakes the run); a reference of a running training Job deleted: ResolvedRefs False naming it
and the Job (read from the Job's own pod template), the Training condition untouched, one
Warning Event, nothing created or deleted; a pod the kubelet can't start
(CreateContainerConfigError) named with the kubelet's message; finished children's
references not checked; the pod's waiting reason and the Job's references parsed from
the API objects, ConfigMaps with their keys, and a claim (or ConfigMap) being deleted as
absent.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from qwenft_operator import conditions as cond
from qwenft_operator.actions import CreateChild, Decision, EmitEvent, Requeue
from qwenft_operator.builders import training
from qwenft_operator.observe import (
    JobFacts,
    PodFacts,
    parse_claim,
    parse_config_map,
    parse_job,
    parse_pod,
)
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.reconcile import Observed, decide
from qwenft_operator.references import Found, Reference
from qwenft_operator.status import QwenFineTuneStatus

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN = "support-lora"
TOKEN = ("secret", "hf-token")
DATASET = ("configmap", "support-chats")
OUTPUT = ("persistentvolumeclaim", "qwenft-runs")
DATASET_REF = "configmap support-chats (key train.jsonl) for spec.dataset.configMap"


def make_run(**spec: Any) -> Run:
    body = yaml.safe_load((EXAMPLES / "lora-single-gpu.yaml").read_text())
    body["metadata"].update(namespace="team", uid="uid-1", generation=2)
    body["spec"].update(copy.deepcopy(spec))
    return Run.from_body(body)


def done(name: str) -> JobFacts:
    return JobFacts(name=name, state="Succeeded")


def created(decision: Decision) -> list[str]:
    return [f"{a.kind} {a.name}" for a in decision.actions if isinstance(a, CreateChild)]


def events(decision: Decision) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in decision.actions if isinstance(a, EmitEvent)]


def condition(decision: Decision, type_: str) -> tuple[str, str, str]:
    found = cond.get_condition(decision.status.conditions, type_)
    assert found is not None, f"no {type_} condition"
    return found.status, found.reason, found.message


VALIDATED = QwenFineTuneStatus(phase=Phase.VALIDATING)
TRAIN_DUE = {"validate_job": done(f"{RUN}-validate")}


def test_training_waits_for_a_deleted_dataset_then_starts_once_it_is_back() -> None:
    run = make_run()
    waiting = decide(run, VALIDATED, Observed(**TRAIN_DUE, references={DATASET: None}), NOW)
    assert created(waiting) == []
    assert waiting.status.phase == Phase.TRAINING
    status, reason, message = condition(waiting, cond.TRAINING)
    assert (status, reason) == ("False", cond.MISSING_REFERENCE)
    assert message == (
        f"waiting for {DATASET_REF} in namespace team before creating Job {RUN}-train: "
        "create it, or change the spec field that names it"
    )
    assert condition(waiting, cond.RESOLVED_REFS)[:2] == ("False", cond.MISSING_REFERENCE)
    assert events(waiting) == [("Normal", "Training"), ("Warning", cond.MISSING_REFERENCE)]
    assert waiting.requeue_after == 30.0  # a ConfigMap: its watch wakes the run sooner
    assert Reference("configmap", "support-chats", "dataset.configMap", "train.jsonl") in (
        waiting.references
    )

    again = decide(run, waiting.status, Observed(**TRAIN_DUE, references={DATASET: None}), NOW)
    assert created(again) == [] and events(again) == []  # the same wait: no second Warning

    back = Observed(**TRAIN_DUE, references={DATASET: Found(frozenset({"train.jsonl"}))})
    started = decide(run, waiting.status, back, NOW + timedelta(seconds=5))
    assert created(started) == [f"ConfigMap {RUN}-config", f"Job {RUN}-train"]
    assert condition(started, cond.RESOLVED_REFS)[:2] == ("True", cond.REFERENCES_FOUND)
    assert ("Normal", cond.REFERENCES_FOUND) in events(started)
    assert condition(started, cond.TRAINING)[1] == cond.PODS_PENDING


def test_a_dataset_without_its_key_is_missing() -> None:
    observed = Observed(**TRAIN_DUE, references={DATASET: Found(frozenset({"other.jsonl"}))})
    decision = decide(make_run(), VALIDATED, observed, NOW)
    assert created(decision) == []
    assert DATASET_REF in condition(decision, cond.TRAINING)[2]


def test_merge_waits_for_the_output_claim() -> None:
    observed = Observed(
        validate_job=done(f"{RUN}-validate"),
        train_job=done(f"{RUN}-train"),
        references={OUTPUT: None},
    )
    decision = decide(make_run(), VALIDATED, observed, NOW)
    assert created(decision) == []
    assert decision.status.phase == Phase.MERGING
    status, reason, message = condition(decision, cond.MERGED)
    assert (status, reason) == ("False", cond.MISSING_REFERENCE)
    assert "persistentvolumeclaim qwenft-runs for spec.output.pvc" in message
    assert f"Job {RUN}-merge" in message


def serving_due(references: dict[Any, Any]) -> Observed:
    return Observed(
        validate_job=done(f"{RUN}-validate"),
        train_job=done(f"{RUN}-train"),
        merge_job=done(f"{RUN}-merge"),
        references=references,
    )


def test_serving_waits_for_the_token_secret_looking_soon_then_less_often() -> None:
    run = make_run()
    first = decide(run, VALIDATED, serving_due({TOKEN: None}), NOW)
    assert created(first) == []
    assert first.status.phase == Phase.DEPLOYING
    status, reason, message = condition(first, cond.READY)
    assert (status, reason) == ("False", cond.MISSING_REFERENCE)
    assert "secret hf-token for spec.model.hub.tokenSecretRef" in message
    assert f"Deployment {RUN}-serve" in message
    assert first.requeue_after == 1.0
    later = [
        decide(run, first.status, serving_due({TOKEN: None}), NOW + timedelta(seconds=s))
        for s in (5, 30, 600)
    ]
    assert [d.requeue_after for d in later] == [1.0, 2.0, 5.0]
    ready = decide(run, first.status, serving_due({TOKEN: Found()}), NOW + timedelta(seconds=7))
    assert created(ready) == [f"Service {RUN}-serve", f"Deployment {RUN}-serve"]
    assert not any(isinstance(a, Requeue) and a.seconds <= 5 for a in ready.actions)


def running_training(references: dict[Any, Any], pods: tuple[PodFacts, ...] = ()) -> Observed:
    job = parse_job(training.build_train_job(make_run()))
    job = JobFacts(**{**job.__dict__, "state": "Active", "ready": 1, "active": 1})
    return Observed(
        validate_job=done(f"{RUN}-validate"), train_job=job, pods=pods, references=references
    )


TRAINING = QwenFineTuneStatus(phase=Phase.TRAINING)


def test_a_reference_deleted_under_the_running_training_job_is_reported() -> None:
    run = make_run()
    decision = decide(run, TRAINING, running_training({DATASET: None}), NOW)
    assert created(decision) == []
    assert condition(decision, cond.TRAINING)[1] == cond.TRAINING_RUNNING  # pods still run
    status, reason, message = condition(decision, cond.RESOLVED_REFS)
    assert (status, reason) == ("False", cond.MISSING_REFERENCE)
    assert f"{DATASET_REF}, used by Job {RUN}-train" in message
    assert "in namespace team" in message
    assert events(decision) == [("Warning", cond.MISSING_REFERENCE)]
    restored = decide(run, decision.status, running_training({}), NOW)
    assert condition(restored, cond.RESOLVED_REFS)[:2] == ("True", cond.REFERENCES_FOUND)
    assert events(restored) == [("Normal", cond.REFERENCES_FOUND)]


def test_a_pod_the_kubelet_cannot_start_is_named() -> None:
    stuck = PodFacts(
        name=f"{RUN}-train-0-abc",
        component="train",
        phase="Pending",
        config_error='secret "hf-token" not found',
    )
    decision = decide(make_run(), TRAINING, running_training({}, pods=(stuck,)), NOW)
    message = condition(decision, cond.RESOLVED_REFS)[2]
    assert f'pod {RUN}-train-0-abc can\'t start: secret "hf-token" not found' in message


def test_finished_children_are_not_checked() -> None:
    merging = Observed(
        validate_job=done(f"{RUN}-validate"),
        train_job=done(f"{RUN}-train"),
        merge_job=parse_job(
            {"metadata": {"name": f"{RUN}-merge"}, "spec": {"template": {"spec": {}}}}
        ),
        references={DATASET: None},  # only the finished validation and training used it
    )
    decision = decide(make_run(), VALIDATED, merging, NOW)
    assert cond.get_condition(decision.status.conditions, cond.RESOLVED_REFS) is None


def test_parse_pod_config_error_and_job_references() -> None:
    pod = parse_pod(
        {
            "metadata": {"name": "p", "labels": {"finetune.qwenft.io/component": "train"}},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": "couldn't find key token in Secret team/hf-token",
                            }
                        },
                    }
                ],
            },
        }
    )
    assert pod.config_error == "couldn't find key token in Secret team/hf-token"
    assert parse_pod({"metadata": {"name": "q"}}).config_error is None
    job = parse_job(training.build_train_job(make_run()))
    assert {(r.kind, r.name) for r in job.references} == {
        TOKEN,
        DATASET,
        OUTPUT,
        ("configmap", f"{RUN}-config"),
    }


def test_parse_config_maps_and_claims() -> None:
    config_map = {"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "Ag=="}}
    assert parse_config_map(config_map) == Found(frozenset({"a", "b"}))
    assert parse_claim({"metadata": {"name": "runs"}}) == Found()
    deleting = {"name": "runs", "deletionTimestamp": "2026-01-02T03:04:05Z"}
    assert parse_claim({"metadata": deleting}) is None  # in use: held by its finalizer
    assert parse_config_map({"metadata": deleting}) is None
