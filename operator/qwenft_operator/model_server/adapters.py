"""Which adapters may join a server, and why the others may not.

Pure: from a server's spec and the ``QwenFineTune`` runs of its namespace, one
:class:`PlannedAdapter` per adapter asked for, each accepted (to be served) or not (Pending:
not trained yet; Refused: it can never be served here, with the reason). A run's adapter
is judged by what the run's spec says it trains, exactly as the run's own serving decides
it (:func:`qwenft_operator.builders.serving.vllm_decision`, the trainer's
:mod:`qwenft_trainer.vllm_serving` rules), so a run and a server never disagree on whether vLLM
can serve an adapter. The operator never serves an adapter on the wrong base: a run is
compared to the server's base by hub id and revision, or claim and path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qwenft_trainer import vllm_serving as rules

from qwenft_operator.builders import serving
from qwenft_operator.model_server.spec import AdapterSource, QwenModelServerSpec
from qwenft_operator.model_server.status import AdapterSourceKind, AdapterStatus
from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.sources import ModelSpec

ADAPTERS_DIR = "/adapters"  # each adapter claim is mounted at /adapters/<claim>

# Reasons of an adapter's state (status.adapters[].reason).
SERVING = "Serving"  # in every ready replica
ROLLING_OUT = "RollingOut"  # accepted; the Deployment is rolling out with it
NOT_TRAINED = "NotTrained"  # the run has no adapter yet
FINE_TUNE_NOT_FOUND = "FineTuneNotFound"  # no QwenFineTune of that name in the namespace
FINE_TUNE_FAILED = "FineTuneFailed"  # the run failed: it has no adapter to serve
INVALID_FINE_TUNE = "InvalidFineTune"  # the run's spec doesn't validate
NOT_AN_ADAPTER = "NotAnAdapter"  # method full: full weights, not an adapter
BASE_MODEL_MISMATCH = "BaseModelMismatch"  # trained on another base or revision
NO_OUTPUT_CLAIM = "NoOutputClaim"  # the run's results are not on a claim the server can mount
VLLM_UNSUPPORTED = "VllmUnsupported"  # vLLM can't serve it as a LoRA (message says why)
RANK_ABOVE_LIMIT = "RankAboveLimit"  # its rank is above spec.vllm.maxLoraRank
DUPLICATE_NAME = "DuplicateName"  # another adapter already has this model name
TOO_MANY_ADAPTERS = "TooManyAdapters"  # more than MAX_SERVED accepted: the rest are refused
ADAPTER_REASONS = (
    SERVING, ROLLING_OUT, NOT_TRAINED, FINE_TUNE_NOT_FOUND, FINE_TUNE_FAILED,
    INVALID_FINE_TUNE, NOT_AN_ADAPTER, BASE_MODEL_MISMATCH, NO_OUTPUT_CLAIM, VLLM_UNSUPPORTED,
    RANK_ABOVE_LIMIT, DUPLICATE_NAME, TOO_MANY_ADAPTERS,
)  # fmt: skip
MAX_SERVED = 256  # adapters one server serves (a selector may match more runs)


@dataclass(frozen=True)
class FineTuneFacts:
    """What a server needs to know of one ``QwenFineTune`` (from the watch's index).

    ``run`` is None when its spec doesn't validate (``problem`` says why).
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    run: Run | None = None
    problem: str = ""
    phase: str | None = None
    trained: bool = False
    deleting: bool = False

    @property
    def server(self) -> str | None:
        """The QwenModelServer its spec.inference.server names, if any."""
        return self.run.spec.inference.server if self.run is not None else None


@dataclass(frozen=True)
class PlannedAdapter:
    """One adapter asked for: its status entry and, when accepted, where it lives."""

    status: AdapterStatus
    claim: str | None = None  # the claim holding it (mounted read-only at /adapters/<claim>)

    @property
    def accepted(self) -> bool:
        return self.claim is not None


def model_identity(model: ModelSpec) -> str:
    """The base as a comparable string: hub id @ revision (main when unpinned), or claim
    path, or plain path. Token Secret, cache and trust_remote_code don't change the weights."""
    if model.hub is not None:
        return f"{model.hub.id}@{model.hub.revision or 'main'}"
    if model.pvc is not None:
        return f"pvc {model.pvc.claim_name}:{posixpath.normpath(model.pvc.path)}"
    return f"path {model.path}"


def adapter_mount_path(claim: str, path: str) -> str:
    """An adapter directory as the server pods see it."""
    return posixpath.join(ADAPTERS_DIR, claim, posixpath.normpath(path))


def _refused(name: str, source: AdapterSourceKind, reason: str, message: str,
             **extra: object) -> PlannedAdapter:  # fmt: skip
    status = AdapterStatus.model_validate(
        {
            "name": name,
            "source": source,
            "state": "Refused",
            "reason": reason,
            "message": message,
            **extra,
        }
    )
    return PlannedAdapter(status=status)


def _pending(name: str, source: AdapterSourceKind, reason: str, message: str,
             **extra: object) -> PlannedAdapter:  # fmt: skip
    status = AdapterStatus.model_validate(
        {
            "name": name,
            "source": source,
            "state": "Pending",
            "reason": reason,
            "message": message,
            **extra,
        }
    )
    return PlannedAdapter(status=status)


def judge_run(
    spec: QwenModelServerSpec, facts: FineTuneFacts, name: str | None, source: AdapterSourceKind
) -> PlannedAdapter:
    """Whether the adapter of one run may join a server with ``spec``."""
    run = facts.run
    served = name or (run.served_model_name if run is not None else facts.name)
    extra: dict[str, object] = {"fine_tune": facts.name}
    if run is None:
        return _refused(served, source, INVALID_FINE_TUNE, facts.problem, **extra)
    if run.spec.method == "full":
        message = f"run {facts.name} trains every weight (method full): there is no adapter"
        return _refused(served, source, NOT_AN_ADAPTER, message, **extra)
    config = serving.predicted_adapter_config(run)
    extra["rank"] = rules.adapter_rank(config)
    trained_on, server_base = model_identity(run.spec.model), model_identity(spec.model)
    if trained_on != server_base:
        message = f"run {facts.name} trained on {trained_on}; this server serves {server_base}"
        return _refused(served, source, BASE_MODEL_MISMATCH, message, **extra)
    if spec.engine == "vllm":
        decision = serving.vllm_decision(run)
        if decision.reasons:
            message = "vLLM can't serve it as a LoRA: " + "; ".join(decision.reasons)
            return _refused(served, source, VLLM_UNSUPPORTED, message, **extra)
        limit = spec.vllm.max_lora_rank if spec.vllm is not None else None
        if limit is not None and decision.adapter_rank > limit:
            message = f"rank {decision.adapter_rank} is above spec.vllm.maxLoraRank {limit}"
            return _refused(served, source, RANK_ABOVE_LIMIT, message, **extra)
    output = run.spec.output.pvc
    if output is None:
        message = f"run {facts.name} writes to output.path, which the server can't mount"
        return _refused(served, source, NO_OUTPUT_CLAIM, message, **extra)
    if facts.phase == Phase.FAILED:
        message = f"run {facts.name} failed before training an adapter"
        return _refused(served, source, FINE_TUNE_FAILED, message, **extra)
    subpath = output.path or run.name
    extra["path"] = adapter_mount_path(output.claim_name, subpath)
    if not facts.trained:
        message = f"run {facts.name} is {facts.phase or 'Pending'}: it joins once trained"
        return _pending(served, source, NOT_TRAINED, message, **extra)
    status = AdapterStatus.model_validate(
        {
            "name": served,
            "source": source,
            "state": "Pending",
            "reason": ROLLING_OUT,
            "message": "",
            **extra,
        }
    )
    return PlannedAdapter(status=status, claim=output.claim_name)


def judge_pvc(spec: QwenModelServerSpec, entry: AdapterSource) -> PlannedAdapter:
    """A pvc adapter: taken as a plain LoRA of its stated rank on the server's base (the
    operator doesn't read volumes); vLLM's rank limit still applies."""
    assert entry.pvc is not None and entry.name is not None and entry.rank is not None
    extra: dict[str, object] = {
        "rank": entry.rank,
        "path": adapter_mount_path(entry.pvc.claim_name, entry.pvc.path),
    }
    if spec.engine == "vllm":
        limit = spec.vllm.max_lora_rank if spec.vllm is not None else None
        fits = rules.round_up_lora_rank(entry.rank)
        if fits is None or (limit is not None and entry.rank > limit):
            largest = limit or rules.VLLM_MAX_LORA_RANKS[-1]
            message = f"rank {entry.rank} is above vLLM's --max-lora-rank {largest}"
            return _refused(entry.name, "pvc", RANK_ABOVE_LIMIT, message, **extra)
    status = AdapterStatus.model_validate(
        {
            "name": entry.name,
            "source": "pvc",
            "state": "Pending",
            "reason": ROLLING_OUT,
            "message": "",
            **extra,
        }
    )
    return PlannedAdapter(status=status, claim=entry.pvc.claim_name)


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def plan_adapters(
    server: str, spec: QwenModelServerSpec, fine_tunes: Sequence[FineTuneFacts]
) -> list[PlannedAdapter]:
    """Every adapter the server is asked for, in spec order, then the runs that attach
    themselves (spec.inference.server), by name. A run asked for twice counts once;
    a second adapter under a model name already taken is refused."""
    runs = {f.name: f for f in fine_tunes if not f.deleting}
    planned: list[PlannedAdapter] = []
    seen_runs: set[str] = set()

    def add_run(facts: FineTuneFacts, name: str | None, source: AdapterSourceKind) -> None:
        if facts.name not in seen_runs:
            seen_runs.add(facts.name)
            planned.append(judge_run(spec, facts, name, source))

    for entry in spec.adapters:
        if entry.from_fine_tune is not None:
            found = runs.get(entry.from_fine_tune)
            if found is None:
                name = entry.name or entry.from_fine_tune
                message = f"no QwenFineTune {entry.from_fine_tune} in this namespace"
                planned.append(
                    _pending(
                        name,
                        "fromFineTune",
                        FINE_TUNE_NOT_FOUND,
                        message,
                        fine_tune=entry.from_fine_tune,
                    )
                )
                seen_runs.add(entry.from_fine_tune)
            else:
                add_run(found, entry.name, "fromFineTune")
        elif entry.selector is not None:
            for facts in sorted(runs.values(), key=lambda f: f.name):
                if _matches(entry.selector.match_labels, facts.labels):
                    add_run(facts, None, "selector")
        else:
            planned.append(judge_pvc(spec, entry))
    for facts in sorted(runs.values(), key=lambda f: f.name):
        if facts.server == server:
            add_run(facts, None, "inferenceServer")
    return _refuse_duplicates(planned, base_name=server)


def _refuse_duplicates(planned: list[PlannedAdapter], *, base_name: str) -> list[PlannedAdapter]:
    """Refuse the second adapter under a name, and one named like the base (the server's
    own name, under which the base answers)."""
    taken: set[str] = {base_name}
    out: list[PlannedAdapter] = []
    for item in planned:
        name = item.status.name
        if name in taken:
            message = (
                f"{name} is the base model's name on this server: give the adapter its own name"
                if name == base_name
                else f"another adapter is already served as {name}: give this one its own name"
            )
            status = item.status.model_copy(
                update={"state": "Refused", "reason": DUPLICATE_NAME, "message": message}
            )
            out.append(PlannedAdapter(status=status))
            continue
        taken.add(name)
        if item.accepted and sum(o.accepted for o in out) >= MAX_SERVED:
            message = f"a server serves at most {MAX_SERVED} adapters: split the selector"
            status = item.status.model_copy(
                update={"state": "Refused", "reason": TOO_MANY_ADAPTERS, "message": message}
            )
            item = PlannedAdapter(status=status)
        out.append(item)
    return out
