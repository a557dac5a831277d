"""Training progress read from the rank-0 trainer's metrics endpoint.

The trainer serves its progress as Prometheus gauges (docs/metrics.md, trainer section) on
``TrainConfig.metrics_port`` of the rank-0 pod. The operator scrapes that endpoint on a
timer, turns it into ``status.progress`` (and ``status.resumedFromStep``), makes
``status.checkpoints`` the complete checkpoints the trainer has on disk (it exports one
series per checkpoint and drops a pruned one's) and mirrors progress into its own per-run
gauges. :func:`parse_progress` and :func:`build_checkpoints` are pure;
:func:`fetch_progress` is the one HTTP call (an ``httpx.AsyncClient``, the operator's one HTTP
client besides the Kubernetes API's: hundreds of runs are scraped without tying up threads).

    progress = await fetch_progress(http, metrics_url(pod))
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qwenft_operator.builders.config import TRAINER_METRICS_PORT
from qwenft_operator.observe import PodFacts
from qwenft_operator.status import MAX_CHECKPOINT_RECORDS, CheckpointRecord, Progress

FETCH_TIMEOUT_SECONDS = 3.0
# Trainer series -> Progress field.
FIELDS = {
    "qwenft_train_step": "step",
    "qwenft_train_total_steps": "total_steps",
    "qwenft_train_epoch": "epoch",
    "qwenft_train_loss": "loss",
    "qwenft_train_eval_loss": "eval_loss",
    "qwenft_train_learning_rate": "learning_rate",
    "qwenft_train_tokens_per_second": "tokens_per_second",
    "qwenft_train_eta_seconds": "eta_seconds",
}
RESUMED = "qwenft_train_resumed_from_step"
LAST_CHECKPOINT = "qwenft_train_last_checkpoint_step"
CHECKPOINTS = "qwenft_train_checkpoint_time_seconds"  # one series per checkpoint on disk
CHECKPOINT_PREFIX = "checkpoint-"  # the trainer's checkpoint directory names
INTEGER_FIELDS = {"step", "total_steps"}
SIGNED_FIELDS = {"loss", "eval_loss"}  # the rest are counts and rates, never below 0
# Gauges start at 0: a loss of exactly 0 means "not logged yet", not a perfect model.
UNSET_AT_ZERO = {"loss", "eval_loss", "total_steps"}


@dataclass(frozen=True)
class TrainerProgress:
    """What one scrape says: progress, the resumed-from step, the checkpoints.

    ``checkpoints`` is (step, Unix time written) of every complete checkpoint on disk, or
    None when the trainer exports no such list (not yet, or an older trainer image).
    """

    progress: Progress
    resumed_from_step: int | None = None
    last_checkpoint_step: int | None = None
    checkpoints: tuple[tuple[int, float], ...] | None = None


def _step(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) and value >= 0 else None


def parse_progress(text: str, run: str | None = None) -> TrainerProgress:
    """Progress from a ``/metrics`` page; only series labelled ``run`` when it is given."""
    values: dict[str, float] = {}
    on_disk: dict[int, float] | None = None
    for family in text_string_to_metric_families(text):
        if family.name == CHECKPOINTS:
            on_disk = {}
        for sample in family.samples:
            if run is not None and sample.labels.get("run") not in (None, run):
                continue
            if sample.name in FIELDS or sample.name in (RESUMED, LAST_CHECKPOINT):
                values[sample.name] = float(sample.value)
            elif on_disk is not None and sample.name == CHECKPOINTS:
                step = _step(_number(sample.labels.get("step")))
                if step is not None and math.isfinite(sample.value):
                    on_disk[step] = float(sample.value)
    fields: dict[str, float | int] = {}
    for series, field in FIELDS.items():
        value = values.get(series)
        if value is None or not math.isfinite(value):
            continue
        if field in UNSET_AT_ZERO and value == 0:
            continue
        if field in INTEGER_FIELDS:
            fields[field] = int(value)
        elif field in SIGNED_FIELDS:
            fields[field] = value
        else:
            fields[field] = max(value, 0.0)
    return TrainerProgress(
        progress=Progress.model_validate(fields),
        resumed_from_step=_step(values.get(RESUMED)),
        last_checkpoint_step=_step(values.get(LAST_CHECKPOINT)),
        checkpoints=None if on_disk is None else tuple(sorted(on_disk.items())),
    )


def _number(label: str | None) -> float | None:
    try:
        return float(label) if label is not None else None
    except ValueError:
        return None


def build_checkpoints(
    records: Sequence[CheckpointRecord],
    found: TrainerProgress,
    output_dir: str,
    now: datetime,
    keep: int,
) -> list[CheckpointRecord]:
    """``status.checkpoints`` after a scrape, oldest first.

    The trainer's list of checkpoints on disk, when it exports one. Otherwise (an older
    trainer) ``records`` with the newest checkpoint step appended when it is new, cut to
    the trainer's ``checkpoint.keep``.
    """

    def record(step: int, time: datetime) -> CheckpointRecord:
        path = posixpath.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
        return CheckpointRecord(step=step, path=path, time=time)

    if found.checkpoints is not None:
        kept = [record(step, datetime.fromtimestamp(t, UTC)) for step, t in found.checkpoints]
        return kept[-MAX_CHECKPOINT_RECORDS:]
    kept = list(records)
    step = found.last_checkpoint_step
    if step is not None and all(existing.step != step for existing in kept):
        kept.append(record(step, now))
    return kept[-min(keep, MAX_CHECKPOINT_RECORDS) :] if keep > 0 else []


def rank_zero(pods: Iterable[PodFacts]) -> PodFacts | None:
    """The running training pod of node rank 0 (completion index 0) with an IP."""
    for pod in pods:
        if (
            pod.component == "train"
            and pod.completion_index == 0
            and pod.phase == "Running"
            and pod.pod_ip
        ):
            return pod
    return None


def metrics_url(pod: PodFacts, port: int = TRAINER_METRICS_PORT) -> str:
    host = f"[{pod.pod_ip}]" if pod.pod_ip and ":" in pod.pod_ip else pod.pod_ip
    return f"http://{host}:{port}/metrics"


async def fetch_progress(
    http: httpx.AsyncClient,
    url: str,
    *,
    run: str | None = None,
    timeout: float = FETCH_TIMEOUT_SECONDS,
) -> TrainerProgress | None:
    """Scrape ``url``; None when the trainer does not answer (not started, restarting)."""
    try:
        response = await http.get(url, timeout=timeout)
    except (httpx.HTTPError, OSError):
        return None
    if response.status_code != 200:
        return None
    return parse_progress(response.text, run=run)
